"""The model's CPU-tuned kernels, and the choice between them and plain JAX ops (``config.model.cpu_kernels``).

Each kernel computes what its plain counterpart computes (the same value up to the last bits, the same gradient)
in a form that XLA's CPU backend runs faster: GELU through erf rather than erfc, a softmax and a dense layer whose
backward passes are written out (custom VJPs), and a residual-stream gradient computed once and stored.

The choice is made once, when the model is built: ``ops(cpu_kernels)`` hands the model an ``Ops`` object,
``CPU_OPS`` (the kernels) or ``PLAIN_OPS`` (``jax.nn.gelu(approximate=False)``, ``jax.nn.softmax``, a plain
matmul, the identity), and the model's math calls its methods; nothing here asks which backend it runs on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

CHOICES = ("auto", "on", "off")  # config.model.cpu_kernels; "auto": on when JAX's default backend is the CPU


def enabled(choice: str | bool | None) -> bool:
    """Whether a ``config.model.cpu_kernels`` value (or a bool; None: "auto") turns the kernels on."""
    if choice is None or choice == "auto":
        return jax.default_backend() == "cpu"
    if isinstance(choice, bool):
        return choice
    if choice not in CHOICES:
        raise ValueError(
            f"config.model.cpu_kernels={choice!r}: expected one of {CHOICES} (auto: on when JAX's default "
            "backend is the CPU)"
        )
    return choice == "on"


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x * Phi(x)``, as 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's formula). ``jax.nn.gelu``'s exact form
    goes through erfc, which XLA's CPU backend evaluates about 2.5x slower; the two differ in the last bits only."""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype)))


@jax.custom_vjp
def softmax(x: jax.Array) -> jax.Array:
    """``jax.nn.softmax`` over the last axis (same forward arithmetic) whose backward pass reads only the saved
    probabilities, p * (g - sum(g * p)): a custom VJP rather than JAX's JVP rule, which on the CPU left XLA
    materializing a broadcast of the normalizer per layer (the tiny train step 3% faster)."""
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return unnormalized / unnormalized.sum(-1, keepdims=True)


def _softmax_fwd(x):
    probs = softmax(x)
    return probs, probs


def _softmax_bwd(probs, g):
    return (probs * (g - (g * probs).sum(-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def store_gradient(x: jax.Array) -> jax.Array:
    """The identity, whose gradient XLA computes once and stores on the CPU. Without it XLA's CPU fusion copies
    the residual stream's gradient (LayerNorm backward plus the residual sum) into each of its consumers (weight
    gradients, transposes, the next layer's backward) and recomputes it there. A conditional is a fusion barrier
    that XLA keeps (``optimization_barrier`` it strips); on other backends a conditional may cost a host round
    trip, which is why ``PLAIN_OPS`` pass the gradient through untouched. Same gradient either way."""
    return x


def _store_fwd(x):
    return x, None


def _store_bwd(_, g):
    first = g[(0,) * g.ndim]  # one element (a ravel could move a sharded array)
    # Both branches return g (a non-finite g stays non-finite); distinct branches keep XLA from turning the
    # conditional into a select, which would be fused again.
    return (jax.lax.cond(jnp.isfinite(first), lambda g: g, lambda g: g + first * 0, g),)


store_gradient.defvjp(_store_fwd, _store_bwd)


@jax.custom_vjp
def dense(x_BxLxD: jax.Array, kernel_DxF: jax.Array) -> jax.Array:
    """``x @ kernel`` with the kernel's gradient written as one 2-D matmul, x[N, D]^T @ g[N, F] (N = B·L): the
    gradient JAX derives contracts over B and L at once, which XLA's CPU backend sends to a generic matmul rather
    than its fast kernels (measured: the tiny train step 9% faster, side by side)."""
    return x_BxLxD @ kernel_DxF


def _dense_fwd(x_BxLxD, kernel_DxF):
    return x_BxLxD @ kernel_DxF, (x_BxLxD, kernel_DxF)


def _dense_bwd(residuals, g_BxLxF):
    x_BxLxD, kernel_DxF = residuals
    x_NxD, g_NxF = x_BxLxD.reshape(-1, x_BxLxD.shape[-1]), g_BxLxF.reshape(-1, g_BxLxF.shape[-1])
    return g_BxLxF @ kernel_DxF.T, x_NxD.T @ g_NxF


dense.defvjp(_dense_fwd, _dense_bwd)


def _plain_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _plain_softmax(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x, axis=-1)


def _plain_dense(x_BxLxD: jax.Array, kernel_DxF: jax.Array) -> jax.Array:
    return x_BxLxD @ kernel_DxF


def _identity(x: jax.Array) -> jax.Array:
    return x


@dataclasses.dataclass(frozen=True)
class Ops:
    """The primitives the model's math calls: ``gelu``, ``softmax`` (last axis), ``dense`` (``x @ kernel``) and
    ``store_gradient`` (the identity). Frozen and hashable: the model keeps it as static structure."""

    cpu_kernels: bool

    @property
    def gelu(self):
        return gelu if self.cpu_kernels else _plain_gelu

    @property
    def softmax(self):
        return softmax if self.cpu_kernels else _plain_softmax

    @property
    def dense(self):
        return dense if self.cpu_kernels else _plain_dense

    @property
    def store_gradient(self):
        return store_gradient if self.cpu_kernels else _identity


CPU_OPS = Ops(cpu_kernels=True)
PLAIN_OPS = Ops(cpu_kernels=False)


def ops(choice: str | bool | None = "auto") -> Ops:
    """``CPU_OPS`` or ``PLAIN_OPS`` for a ``config.model.cpu_kernels`` value (see ``enabled``), decided now."""
    return CPU_OPS if enabled(choice) else PLAIN_OPS
