"""One Transformer for causal and masked language modelling (Flax NNX).

Pre-LayerNorm blocks with multi-head attention and a GELU or SwiGLU MLP, sequential or parallel residual
(GPT-NeoX); learned or rotary positions; tied or untied embeddings. The MLP takes an optional per-token gate over
its hidden units, ``mlp_gate_BxLxF`` (MemSinks' sequence-tied masks, see ``memdyn.studies.memsinks.masks``), and
attention
optional per-token segment ids (packed documents). Every parameter carries logical axis names (see
``memdyn.model.sharding``).

Causal models also decode incrementally with a KV cache (``Transformer.prefill`` then ``decode_step``), doing
the same per-query arithmetic as the full pass; ``memdyn.extraction.extractability`` builds greedy decoding on it.

Shape suffixes: B batch, L length, D d_model, H heads, K head_dim, F d_ff, V vocabulary, S key length, M prompt
length.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from memdyn.model import sharding
from memdyn.model.sizes import ModelShape

# Shardings come from the logical names at jit time (explicit in/out shardings), not at variable creation.
nnx.use_eager_sharding(False)

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], *, init: str = "normal") -> nnx.Param:
    if init == "normal":
        initializer = nnx.initializers.normal(_INIT_STD)
    elif init == "zeros":
        initializer = nnx.initializers.zeros_init()
    else:
        initializer = nnx.initializers.ones_init()
    return nnx.Param(nnx.with_partitioning(initializer, names)(rngs.params(), shape))


class LayerNorm(nnx.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = _param(rngs, (d_model,), ("embed",), init="ones")
        self.bias = _param(rngs, (d_model,), ("embed",), init="zeros")

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
    that XLA keeps (``optimization_barrier`` it strips); on other backends, where a conditional may cost a host
    round trip, the gradient passes through untouched. Same gradient either way."""
    return x


def _store_fwd(x):
    return x, None


def _store_bwd(_, g):
    if jax.default_backend() != "cpu":
        return (g,)
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


ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")  # as config.ATTENTION_IMPLEMENTATIONS (no config import)
# Rematerialisation (config.model.remat): what each block keeps for the backward pass; the rest is recomputed.
REMAT_POLICIES = {
    "none": None,  # no remat: every activation is kept
    "block": jax.checkpoint_policies.nothing_saveable,  # only each block's input: the least memory
    "dots": jax.checkpoint_policies.dots_saveable,  # matmul outputs kept, elementwise work recomputed
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # as dots, less attention
}


class Attention(nnx.Module):
    def __init__(self, shape: ModelShape, *, rngs: nnx.Rngs, implementation: str = "einsum"):
        """``implementation``: "einsum", memdyn's own softmax attention (any device; on the CPU 8-15% faster per
        train step than the next at tiny/small), or ``jax.nn.dot_product_attention``'s "xla" (any device) or
        "cudnn" (NVIDIA GPUs: fused attention, bfloat16 only). KV-cache decoding uses "cudnn"'s fallback "xla"."""
        d, h, k = shape.d_model, shape.num_heads, shape.head_dim
        self.shape = shape
        self.implementation = implementation
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", _param(rngs, (d, h, k), ("embed", "heads", "head_dim")))
            setattr(self, f"{name}_bias", _param(rngs, (h, k), ("heads", "head_dim"), init="zeros"))
        self.out_kernel = _param(rngs, (h, k, d), ("heads", "head_dim", "embed"))
        self.out_bias = _param(rngs, (d,), ("embed",), init="zeros")

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
            probs_BxHxLxS = softmax(scores_BxHxLxS).astype(dtype)
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

    def __init__(self, d_model: int, d_ff: int, kind: str = "gelu", *, rngs: nnx.Rngs):
        self.kind = kind
        # Creation order fixes each parameter's random key: the GELU order is the one every earlier run used.
        self.in_kernel = _param(rngs, (d_model, d_ff), ("embed", "mlp"))
        if kind == "swiglu":
            self.up_kernel = _param(rngs, (d_model, d_ff), ("embed", "mlp"))
        else:
            self.in_bias = _param(rngs, (d_ff,), ("mlp",), init="zeros")
        self.out_kernel = _param(rngs, (d_ff, d_model), ("mlp", "embed"))
        if kind != "swiglu":
            self.out_bias = _param(rngs, (d_model,), ("embed",), init="zeros")

    def __call__(
        self, x_BxLxD: jax.Array, gate_BxLxF: jax.Array | None = None, grad_gate_BxLxF: jax.Array | None = None
    ) -> jax.Array:
        dtype = x_BxLxD.dtype
        names = ("batch", "length", "act_mlp")
        if self.kind == "swiglu":
            pre_BxLxF = sharding.constrain(dense(x_BxLxD, self.in_kernel[...].astype(dtype)), names)
            up_BxLxF = sharding.constrain(dense(x_BxLxD, self.up_kernel[...].astype(dtype)), names)
            h_BxLxF = jax.nn.silu(pre_BxLxF) * up_BxLxF
        else:
            h_BxLxF = dense(x_BxLxD, self.in_kernel[...].astype(dtype)) + self.in_bias[...].astype(dtype)
            h_BxLxF = sharding.constrain(gelu(h_BxLxF), names)
        if gate_BxLxF is not None:  # MemSinks: the sink units of other sequences are switched off
            h_BxLxF = h_BxLxF * sharding.constrain(gate_BxLxF.astype(dtype), names)
        out_kernel = self.out_kernel[...].astype(dtype)
        if grad_gate_BxLxF is None:
            out = dense(h_BxLxF, out_kernel)
        else:
            g = sharding.constrain(grad_gate_BxLxF.astype(dtype), names)
            out = dense(h_BxLxF * g, out_kernel) + jax.lax.stop_gradient((h_BxLxF * (1 - g)) @ out_kernel)
        return out if self.kind == "swiglu" else out + self.out_bias[...].astype(dtype)


class Block(nnx.Module):
    def __init__(self, shape: ModelShape, *, rngs: nnx.Rngs, attention: str = "einsum"):
        self.parallel_residual = shape.parallel_residual
        self.attention_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        self.attention = Attention(shape, rngs=rngs, implementation=attention)
        self.mlp_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        self.mlp = MLP(shape.d_model, shape.d_ff, shape.mlp, rngs=rngs)

    def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF=None):
        return self.with_kv(x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF)[0]

    def with_kv(
        self, x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF=None, cache_kv=None, start=0, grad_gate_BxLxF=None
    ):
        """Block output and the attention's keys/values (see ``Attention.with_kv`` for ``cache_kv``)."""
        x_BxLxD = store_gradient(x_BxLxD)  # the residual stream's gradient, stored once per sublayer (CPU)
        attended_BxLxD, kv = self.attention.with_kv(
            self.attention_norm(x_BxLxD), mask_Bx1xLxS, positions_BxL, cache_kv, start
        )
        # Parallel residual (GPT-NeoX): the MLP reads the block's input, not the attention's output.
        mlp_input_BxLxD = x_BxLxD if self.parallel_residual else store_gradient(x_BxLxD + attended_BxLxD)
        x_BxLxD = x_BxLxD + attended_BxLxD + self.mlp(self.mlp_norm(mlp_input_BxLxD), gate_BxLxF, grad_gate_BxLxF)
        return sharding.constrain(x_BxLxD, ("batch", "length", "act_embed")), kv


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for S slots, filled by ``Transformer.prefill`` / ``decode_step``.

    ``keys`` and ``values`` hold one [B, S, H, K] array per layer (rotary already applied to keys): a decode step
    writes one slot of each in place, where one stacked array would be copied whole at every step.
    ``valid_BxS`` marks the slots a query may attend to (real prompt tokens and tokens decoded so far).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid_BxS: jax.Array


class Transformer(nnx.Module):
    """Causal LM (``causal=True``) or masked LM (bidirectional attention)."""

    def __init__(
        self,
        shape: ModelShape,
        *,
        causal: bool,
        rngs: nnx.Rngs,
        dtype: str = "float32",
        gated_layers: tuple[int, ...] = (),
        attention: str = "einsum",
        remat: str = "none",
        scan_layers: bool = False,
    ):
        """``gated_layers``: the layers whose MLP takes the MLP gates (MemSinks' sinks); empty: every layer.
        ``attention``: the attention implementation (see ``Attention``); ``remat``: a ``REMAT_POLICIES`` name,
        applied to every block of the full forward pass (same numbers, less activation memory, more compute).
        ``scan_layers``: the blocks are one module, ``blocks``, whose parameters carry a leading ``layers`` axis,
        and the forward pass is a scan over it (compiled once, whatever the depth); else ``block_00``, ..."""
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"config.model.attention={attention!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
        if remat not in REMAT_POLICIES:
            raise ValueError(f"config.model.remat={remat!r}: expected one of {tuple(REMAT_POLICIES)}")
        self.remat = remat
        self.scan_layers = scan_layers
        shape.validate()
        if scan_layers and gated_layers and tuple(gated_layers) != tuple(range(shape.num_layers)):
            raise ValueError(
                f"config.memsinks.layers={list(gated_layers)} with config.model.scan_layers=True: a "
                "scanned model runs the same block in every layer, so its MLP gates act in all of them"
            )
        for layer in gated_layers:
            if not 0 <= layer < shape.num_layers:
                raise ValueError(
                    f"config.memsinks.layers: layer {layer} does not exist (the model has {shape.num_layers} layers)"
                )
        self.shape = shape
        self.causal = causal
        self.gated_layers = tuple(gated_layers) or tuple(range(shape.num_layers))
        self.dtype = jnp.dtype(dtype)
        self.embed = _param(rngs, (shape.vocab_size, shape.d_model), ("vocab", "embed"))
        if shape.positions == "learned":
            self.position_embed = _param(rngs, (shape.max_len, shape.d_model), ("positions", "embed"))
        if scan_layers:

            @nnx.split_rngs(splits=shape.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked_blocks(rngs):
                return Block(shape, rngs=rngs, attention=attention)

            self.blocks = stacked_blocks(rngs)
            self.block_names = ()
        else:
            # Named attributes rather than a list keep checkpoint paths plain strings ("block_00", ...).
            self.block_names = tuple(f"block_{i:02d}" for i in range(shape.num_layers))
            for name in self.block_names:
                setattr(self, name, Block(shape, rngs=rngs, attention=attention))
        self.final_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        if not shape.tie_embeddings:
            self.unembed = _param(rngs, (shape.d_model, shape.vocab_size), ("embed", "vocab"))

    def __call__(
        self,
        tokens_BxL: jax.Array,
        *,
        valid_BxL: jax.Array | None = None,
        mlp_gate_BxLxF: jax.Array | None = None,
        segment_ids_BxL: jax.Array | None = None,
        mlp_grad_gate_BxLxF: jax.Array | None = None,
        logits_from: int = 0,
    ) -> jax.Array:
        """Logits [B, L - logits_from, V] in float32. ``valid_BxL`` marks real (non-padding) tokens; padded keys
        are masked. ``logits_from`` (static): positions before it are context only and get no logits (the output
        projection is the largest matmul of a small model, so extraction skips it on the prompt).

        ``segment_ids_BxL``: the document of each token when a row packs several; attention then stays within a
        document (block-causal for a causal LM). The MLP gates act in ``gated_layers`` (see ``MLP``).
        """
        hidden_BxLxD = self._forward(tokens_BxL, valid_BxL, mlp_gate_BxLxF, segment_ids_BxL, mlp_grad_gate_BxLxF)[0]
        return self._unembed(hidden_BxLxD[:, logits_from:])

    def prefill(
        self,
        tokens_BxM: jax.Array,
        max_len: int,
        *,
        valid_BxM: jax.Array | None = None,
        mlp_gate_BxF: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Runs a prompt through the causal model: its logits [B, M, V] (equal to ``self(tokens_BxM)``) and a
        cache of ``max_len`` slots holding the prompt's keys and values, ready for ``decode_step(·, ·, M)``.

        ``valid_BxM`` marks real prompt tokens as in ``__call__`` (default: all real). Positions are always
        0..M-1, so decoding continues ``self(concat(prompt, new), valid_BxL=concat(valid_BxM, ones))``: that is
        the training layout only for full-length (unpadded) prompts, which is what extraction uses.
        ``mlp_gate_BxF`` is a per-sequence MLP gate, applied at every position (MemSinks' sequence-tied masks).
        """
        self._require_causal()
        batch, length = tokens_BxM.shape
        if not length <= max_len <= self.shape.max_len:
            raise ValueError(
                f"cache length {max_len} must lie between the prompt length {length} and the position "
                f"table (config.model.max_len={self.shape.max_len})"
            )
        gate_BxMxF = (
            None
            if mlp_gate_BxF is None
            else jnp.broadcast_to(mlp_gate_BxF[:, None, :], (batch, length, mlp_gate_BxF.shape[-1]))
        )
        hidden_BxMxD, keys, values = self._forward(tokens_BxM, valid_BxM, gate_BxMxF)
        logits_BxMxV = self._unembed(hidden_BxMxD)
        free = max_len - length
        slots = ((0, 0), (0, free), (0, 0), (0, 0))
        valid_BxM = jnp.ones((batch, length), bool) if valid_BxM is None else valid_BxM.astype(bool)
        cache = KVCache(
            keys=tuple(jnp.pad(k_BxMxHxK, slots) for k_BxMxHxK in keys),
            values=tuple(jnp.pad(v_BxMxHxK, slots) for v_BxMxHxK in values),
            valid_BxS=jnp.pad(valid_BxM, ((0, 0), (0, free))),
        )  # empty slots are not valid keys
        return logits_BxMxV, cache

    def decode_step(
        self,
        token_B: jax.Array,
        cache: KVCache,
        position: jax.Array | int,
        *,
        mlp_gate_BxF: jax.Array | None = None,
        layers: tuple[nnx.GraphDef, list[nnx.State]] | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Feeds one token per sequence at ``position`` (same for the whole batch; may be traced) and returns its
        next-token logits [B, V] in float32 and the cache with this token's keys/values added.

        Positions must be fed in order, starting at the prompt length given to ``prefill``; ``position`` must be
        below the cache length (not checkable when traced: out-of-range writes are clamped by XLA).
        ``layers``: a scanned model's ``layer_slices()``, taken once before a decoding loop (else every token
        slices the stacked weights again).
        """
        self._require_causal()
        batch = token_B.shape[0]
        max_len = cache.keys[0].shape[1]
        positions_Bx1 = jnp.full((batch, 1), position)
        x_Bx1xD = self._embed(token_B[:, None], position)
        valid_BxS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BxS, jnp.ones((batch, 1), bool), position, 1)
        mask_Bx1x1xS = (valid_BxS & (jnp.arange(max_len) <= position))[:, None, None, :]
        gate_Bx1xF = None if mlp_gate_BxF is None else mlp_gate_BxF[:, None, :]
        keys, values = [], []
        for i, block in enumerate(self._blocks(layers)):
            x_Bx1xD, (keys_BxSxHxK, values_BxSxHxK) = block.with_kv(
                x_Bx1xD,
                mask_Bx1x1xS,
                positions_Bx1,
                self._layer_gate(i, gate_Bx1xF),
                (cache.keys[i], cache.values[i]),
                position,
            )
            keys.append(keys_BxSxHxK)
            values.append(values_BxSxHxK)
        logits_BxV = self._unembed(x_Bx1xD)[:, 0]
        return logits_BxV, KVCache(keys=tuple(keys), values=tuple(values), valid_BxS=valid_BxS)

    def layer_slices(self) -> tuple[nnx.GraphDef, list[nnx.State]] | None:
        """Of a scanned model, one block's graph and each layer's slice of the stacked parameters; None when
        unrolled (its blocks are apart already)."""
        if not self.scan_layers:
            return None
        graphdef, state = nnx.split(self.blocks)
        return graphdef, [jax.tree.map(lambda x, i=i: x[i], state) for i in range(self.shape.num_layers)]

    def _blocks(self, layers: tuple[nnx.GraphDef, list[nnx.State]] | None = None) -> list[Block]:
        """The blocks in order; of a scanned model, each a view of its layer's slice of the stacked parameters
        (``layers`` if given, from ``layer_slices``)."""
        if not self.scan_layers:
            return [getattr(self, name) for name in self.block_names]
        graphdef, states = layers or self.layer_slices()
        return [nnx.merge(graphdef, state) for state in states]

    def _require_causal(self) -> None:
        if not self.causal:
            raise ValueError("KV-cache decoding needs a causal LM; this Transformer is a masked LM (causal=False)")

    def _embed(self, tokens_BxL: jax.Array, start: jax.Array | int) -> jax.Array:
        """Token (plus learned position) embeddings of tokens at positions start, ..., start + L - 1."""
        x_BxLxD = self.embed[...][tokens_BxL].astype(self.dtype)
        if self.shape.positions == "learned":
            table_LxD = jax.lax.dynamic_slice_in_dim(self.position_embed[...], start, tokens_BxL.shape[1])
            x_BxLxD = x_BxLxD + table_LxD.astype(self.dtype)
        return sharding.constrain(x_BxLxD, ("batch", "length", "act_embed"))

    def _unembed(self, x_BxLxD: jax.Array) -> jax.Array:
        x_BxLxD = self.final_norm(x_BxLxD)
        unembed_DxV = self.embed[...].T if self.shape.tie_embeddings else self.unembed[...]
        logits_BxLxV = jnp.einsum(
            "bld,dv->blv", x_BxLxD, unembed_DxV.astype(self.dtype), preferred_element_type=jnp.float32
        )
        return sharding.constrain(logits_BxLxV, ("batch", "length", "act_vocab"))

    def _layer_gate(self, layer: int, gate):
        return gate if layer in self.gated_layers else None

    def _forward(self, tokens_BxL, valid_BxL, mlp_gate_BxLxF, segment_ids_BxL=None, mlp_grad_gate_BxLxF=None):
        """Full forward pass: the last block's output [B, L, D] (before the final norm) and every layer's keys and
        values, [B, L, H, K] per layer: lists, or one stacked array of a scanned model (unused outputs cost nothing
        under jit)."""
        batch, length = tokens_BxL.shape
        if length > self.shape.max_len:
            raise ValueError(
                f"sequence length {length} exceeds the position table (config.model.max_len={self.shape.max_len})"
            )
        if valid_BxL is None:
            valid_BxL = jnp.ones_like(tokens_BxL, dtype=bool)
        positions_BxL = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x_BxLxD = self._embed(tokens_BxL, 0)

        mask_Bx1xLxS = valid_BxL[:, None, None, :]
        if self.causal:
            mask_Bx1xLxS = mask_Bx1xLxS & jnp.tril(jnp.ones((length, length), bool))[None, None]
        if segment_ids_BxL is not None:  # packed documents never see each other
            mask_Bx1xLxS = mask_Bx1xLxS & (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])

        def block_forward(block, x_BxLxD, gate_BxLxF, grad_gate_BxLxF):
            return block.with_kv(x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF, grad_gate_BxLxF=grad_gate_BxLxF)

        if self.remat != "none":
            block_forward = nnx.remat(block_forward, policy=REMAT_POLICIES[self.remat])
        if self.scan_layers:  # every layer gated alike (checked in __init__): the gates are the same each step
            graphdef, stacked = nnx.split(self.blocks)

            def each_layer(x_BxLxD, layer_state):  # a plain lax.scan over the layers' slices of the parameters
                return block_forward(nnx.merge(graphdef, layer_state), x_BxLxD, mlp_gate_BxLxF, mlp_grad_gate_BxLxF)

            x_BxLxD, (keys_NxBxLxHxK, values_NxBxLxHxK) = jax.lax.scan(each_layer, x_BxLxD, stacked)
            return x_BxLxD, keys_NxBxLxHxK, values_NxBxLxHxK  # indexed by layer, like the lists below
        keys, values = [], []
        for i, name in enumerate(self.block_names):
            x_BxLxD, (keys_BxLxHxK, values_BxLxHxK) = block_forward(
                getattr(self, name),
                x_BxLxD,
                self._layer_gate(i, mlp_gate_BxLxF),
                self._layer_gate(i, mlp_grad_gate_BxLxF),
            )
            keys.append(keys_BxLxHxK)
            values.append(values_BxLxHxK)
        return x_BxLxD, keys, values


def stack_blocks(params: dict) -> dict:
    """Parameters of an unrolled model (``block_00``, ...) as those of the scanned one (``blocks``, with a leading
    layers axis); ``unstack_blocks`` is the inverse. Pure dicts of arrays, e.g. a checkpoint's."""
    names = sorted(k for k in params if k.startswith("block_"))
    out = {k: v for k, v in params.items() if not k.startswith("block_")}
    out["blocks"] = jax.tree.map(lambda *layers: jnp.stack(layers), *[params[name] for name in names])
    return out


def unstack_blocks(params: dict) -> dict:
    out = {k: v for k, v in params.items() if k != "blocks"}
    num_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    for i in range(num_layers):
        out[f"block_{i:02d}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
    return out


def convert_layout(tree, scanned: bool):
    """Parameters, or an optimizer state holding parameter-shaped trees (Adam's moments), with their blocks
    stacked (``scanned``: ``stack_blocks``) or apart (``unstack_blocks``), wherever in ``tree`` they occur."""
    if isinstance(tree, dict):
        tree = {k: convert_layout(v, scanned) for k, v in tree.items()}
        if scanned and any(k.startswith("block_") for k in tree):
            return stack_blocks(tree)
        if not scanned and "blocks" in tree:
            return unstack_blocks(tree)
        return tree
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # optax states are named tuples
        return type(tree)(*(convert_layout(v, scanned) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(convert_layout(v, scanned) for v in tree)
    return tree
