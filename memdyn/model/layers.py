"""The Transformer's layers (Flax NNX): LayerNorm, rotary positions, multi-head attention and the MLP.

Every parameter carries logical axis names (see ``memdyn.model.sharding``); the math calls the ``ops`` it is
given (``memdyn.model.cpu_kernels``: CPU-tuned kernels or plain JAX ops, chosen once when the model is built).

Shape suffixes: B batch, L length, D d_model, H heads, K head_dim, F d_ff, S key length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memdyn.model import cpu_kernels as kernels
from memdyn.model import sharding
from memdyn.model.sizes import ModelShape

_INIT_STD = 0.02


def param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], *, init: str = "normal") -> nnx.Param:
    if init == "normal":
        initializer = nnx.initializers.normal(_INIT_STD)
    elif init == "zeros":
        initializer = nnx.initializers.zeros_init()
    else:
        initializer = nnx.initializers.ones_init()
    # Shardings come from the logical names at jit time (explicit in/out shardings), not at variable creation.
    return nnx.Param(nnx.with_partitioning(initializer, names)(rngs.params(), shape), eager_sharding=False)


class LayerNorm(nnx.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (d_model,), ("embed",), init="ones")
        self.bias = param(rngs, (d_model,), ("embed",), init="zeros")

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x_BxLxD.dtype)


def rotary(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, fraction: float, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (GPT-NeoX layout: rotate halves) on the first ``fraction`` of head dims."""
    head_dim = x_BxLxHxK.shape[-1]
    rot_dim = max(2, int(head_dim * fraction)) // 2 * 2
    x_rot, x_pass = x_BxLxHxK[..., :rot_dim], x_BxLxHxK[..., rot_dim:]
    inv_freq = 1.0 / (base ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))
    angles_BxLxR = positions_BxL[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([angles_BxLxR, angles_BxLxR], axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    x_rot = x_rot.astype(jnp.float32) * jnp.cos(angles) + rotated * jnp.sin(angles)
    return jnp.concatenate([x_rot.astype(x_BxLxHxK.dtype), x_pass], axis=-1)


ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")  # as config.ATTENTION_IMPLEMENTATIONS (no config import)


class Attention(nnx.Module):
    def __init__(
        self,
        shape: ModelShape,
        *,
        rngs: nnx.Rngs,
        implementation: str = "einsum",
        ops: kernels.Ops | None = None,
    ):
        """``implementation``: "einsum", memdyn's own softmax attention (any device; on the CPU 8-15% faster per
        train step than the next at tiny/small), or ``jax.nn.dot_product_attention``'s "xla" (any device) or
        "cudnn" (NVIDIA GPUs: fused attention, bfloat16 only). KV-cache decoding uses "cudnn"'s fallback "xla".
        ``ops``: the primitives of the math (``memdyn.model.cpu_kernels``; None: chosen for the backend now)."""
        d, h, k = shape.d_model, shape.num_heads, shape.head_dim
        self.shape = shape
        self.implementation = implementation
        self.ops = ops or kernels.ops()
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", param(rngs, (d, h, k), ("embed", "heads", "head_dim")))
            setattr(self, f"{name}_bias", param(rngs, (h, k), ("heads", "head_dim"), init="zeros"))
        self.out_kernel = param(rngs, (h, k, d), ("heads", "head_dim", "embed"))
        self.out_bias = param(rngs, (d,), ("embed",), init="zeros")

    def __call__(self, x_BxLxD: jax.Array, mask_Bx1xLxS: jax.Array, positions_BxL: jax.Array) -> jax.Array:
        return self.with_kv(x_BxLxD, mask_Bx1xLxS, positions_BxL)[0]

    def with_kv(
        self,
        x_BxLxD: jax.Array,
        mask_Bx1xLxS: jax.Array,
        positions_BxL: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        start: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Attention output and the keys/values it attended to (rotary already applied to keys).

        Without ``cache_kv`` the L queries attend to the L new keys (the full forward pass). With
        ``cache_kv = (keys_BxSxHxK, values_BxSxHxK)`` the new keys/values are first written into the cache at
        ``start`` and the queries attend to all S cache slots; ``mask_Bx1xLxS`` then spans the cache.
        """
        dtype = x_BxLxD.dtype
        names = ("batch", "length", "act_heads", None)

        def project(name: str) -> jax.Array:
            kernel = getattr(self, f"{name}_kernel")[...].astype(dtype)
            y = jnp.einsum("bld,dhk->blhk", x_BxLxD, kernel) + getattr(self, f"{name}_bias")[...].astype(dtype)
            return sharding.constrain(y, names)

        q_BxLxHxK, k_BxSxHxK, v_BxSxHxK = project("query"), project("key"), project("value")
        if self.shape.positions == "rotary":
            q_BxLxHxK = rotary(q_BxLxHxK, positions_BxL, self.shape.rotary_fraction, self.shape.rotary_base)
            k_BxSxHxK = rotary(k_BxSxHxK, positions_BxL, self.shape.rotary_fraction, self.shape.rotary_base)
        if cache_kv is not None:
            keys_BxSxHxK, values_BxSxHxK = cache_kv
            k_BxSxHxK = jax.lax.dynamic_update_slice_in_dim(
                keys_BxSxHxK, k_BxSxHxK.astype(keys_BxSxHxK.dtype), start, axis=1
            )
            v_BxSxHxK = jax.lax.dynamic_update_slice_in_dim(
                values_BxSxHxK, v_BxSxHxK.astype(values_BxSxHxK.dtype), start, axis=1
            )
        # One code path for full and cached attention: empty cache slots get probability exactly 0, so a cached
        # query computes what the full pass computes (up to rounding, as the matrix shapes differ). Scores and
        # softmax are float32 whatever the compute dtype; the mask carries causal, padding, per-document and
        # cache-slot masking alike (a masked LM's is padding only).
        scale = self.shape.head_dim**-0.5
        if self.implementation == "einsum":
            scores_BxHxLxS = (
                jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK, preferred_element_type=jnp.float32) * scale
            )
            scores_BxHxLxS = jnp.where(mask_Bx1xLxS, scores_BxHxLxS, jnp.finfo(jnp.float32).min)
            probs_BxHxLxS = self.ops.softmax(scores_BxHxLxS).astype(dtype)
            out_BxLxHxK = jnp.einsum("bhls,bshk->blhk", probs_BxHxLxS, v_BxSxHxK)
        else:
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK,
                k_BxSxHxK,
                v_BxSxHxK,
                mask=mask_Bx1xLxS,
                scale=scale,
                implementation="xla" if cache_kv is not None else self.implementation,
            )
        out_BxLxHxK = sharding.constrain(out_BxLxHxK, names)
        out = jnp.einsum("blhk,hkd->bld", out_BxLxHxK, self.out_kernel[...].astype(dtype))
        return out + self.out_bias[...].astype(dtype), (k_BxSxHxK, v_BxSxHxK)


class MLP(nnx.Module):
    """GELU MLP (``W_out · gelu(W_in x + b_in) + b_out``) or SwiGLU (``W_out · (silu(W_in x) * W_up x)``, no
    biases: the MemSinks authors' model).

    ``gate_BxLxF`` multiplies the hidden units before the output projection (MemSinks' sink masks and their
    evaluation modes). ``grad_gate_BxLxF`` (1/0) keeps the forward value but lets only units marked 1 pass
    gradient, to the MLP's weights and to its input (the shared-sink baseline's gradient masking).
    """

    def __init__(self, d_model: int, d_ff: int, kind: str = "gelu", *, rngs: nnx.Rngs, ops: kernels.Ops | None = None):
        self.kind = kind
        self.ops = ops or kernels.ops()
        # Creation order fixes each parameter's random key: the GELU order is the one every earlier run used.
        self.in_kernel = param(rngs, (d_model, d_ff), ("embed", "mlp"))
        if kind == "swiglu":
            self.up_kernel = param(rngs, (d_model, d_ff), ("embed", "mlp"))
        else:
            self.in_bias = param(rngs, (d_ff,), ("mlp",), init="zeros")
        self.out_kernel = param(rngs, (d_ff, d_model), ("mlp", "embed"))
        if kind != "swiglu":
            self.out_bias = param(rngs, (d_model,), ("embed",), init="zeros")

    def __call__(
        self, x_BxLxD: jax.Array, gate_BxLxF: jax.Array | None = None, grad_gate_BxLxF: jax.Array | None = None
    ) -> jax.Array:
        dtype, dense = x_BxLxD.dtype, self.ops.dense
        names = ("batch", "length", "act_mlp")
        if self.kind == "swiglu":
            pre_BxLxF = sharding.constrain(dense(x_BxLxD, self.in_kernel[...].astype(dtype)), names)
            up_BxLxF = sharding.constrain(dense(x_BxLxD, self.up_kernel[...].astype(dtype)), names)
            h_BxLxF = jax.nn.silu(pre_BxLxF) * up_BxLxF
        else:
            h_BxLxF = dense(x_BxLxD, self.in_kernel[...].astype(dtype)) + self.in_bias[...].astype(dtype)
            h_BxLxF = sharding.constrain(self.ops.gelu(h_BxLxF), names)
        if gate_BxLxF is not None:  # MemSinks: the sink units of other sequences are switched off
            h_BxLxF = h_BxLxF * sharding.constrain(gate_BxLxF.astype(dtype), names)
        out_kernel = self.out_kernel[...].astype(dtype)
        if grad_gate_BxLxF is None:
            out = dense(h_BxLxF, out_kernel)
        else:
            g = sharding.constrain(grad_gate_BxLxF.astype(dtype), names)
            out = dense(h_BxLxF * g, out_kernel) + jax.lax.stop_gradient((h_BxLxF * (1 - g)) @ out_kernel)
        return out if self.kind == "swiglu" else out + self.out_bias[...].astype(dtype)
