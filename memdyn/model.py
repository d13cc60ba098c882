"""One Transformer for causal and masked language modelling (Flax NNX).

Pre-LayerNorm blocks with multi-head attention and a GELU MLP; learned or rotary positions; tied or untied
embeddings. The MLP takes an optional per-token gate over its hidden units, ``mlp_gate_BxLxF`` (MemSinks'
sequence-tied masks). Every parameter carries logical axis names (see ``memdyn.sharding``).

Shape suffixes: B batch, L length, D d_model, H heads, K head_dim, F d_ff, V vocabulary, S key length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memdyn import sharding
from memdyn.sizes import ModelShape

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
    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, (d_model,), ("embed",), init="ones")
        self.bias = _param(rngs, (d_model,), ("embed",), init="zeros")

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5)
        return (y * self.scale[...] + self.bias[...]).astype(x_BxLxD.dtype)


def rotary(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, fraction: float) -> jax.Array:
    """Rotary position embedding (GPT-NeoX layout: rotate halves) on the first ``fraction`` of head dims."""
    head_dim = x_BxLxHxK.shape[-1]
    rot_dim = max(2, int(head_dim * fraction)) // 2 * 2
    x_rot, x_pass = x_BxLxHxK[..., :rot_dim], x_BxLxHxK[..., rot_dim:]
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))
    angles_BxLxR = positions_BxL[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([angles_BxLxR, angles_BxLxR], axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    x_rot = x_rot.astype(jnp.float32) * jnp.cos(angles) + rotated * jnp.sin(angles)
    return jnp.concatenate([x_rot.astype(x_BxLxHxK.dtype), x_pass], axis=-1)


class Attention(nnx.Module):
    def __init__(self, shape: ModelShape, *, rngs: nnx.Rngs):
        d, h, k = shape.d_model, shape.num_heads, shape.head_dim
        self.shape = shape
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", _param(rngs, (d, h, k), ("embed", "heads", "head_dim")))
            setattr(self, f"{name}_bias", _param(rngs, (h, k), ("heads", "head_dim"), init="zeros"))
        self.out_kernel = _param(rngs, (h, k, d), ("heads", "head_dim", "embed"))
        self.out_bias = _param(rngs, (d,), ("embed",), init="zeros")

    def __call__(self, x_BxLxD: jax.Array, mask_Bx1xLxS: jax.Array, positions_BxL: jax.Array) -> jax.Array:
        dtype = x_BxLxD.dtype
        names = ("batch", "length", "act_heads", None)

        def project(name: str) -> jax.Array:
            kernel = getattr(self, f"{name}_kernel")[...].astype(dtype)
            y = jnp.einsum("bld,dhk->blhk", x_BxLxD, kernel) + getattr(self, f"{name}_bias")[...].astype(dtype)
            return sharding.constrain(y, names)

        q_BxLxHxK, k_BxSxHxK, v_BxSxHxK = project("query"), project("key"), project("value")
        if self.shape.positions == "rotary":
            q_BxLxHxK = rotary(q_BxLxHxK, positions_BxL, self.shape.rotary_fraction)
            k_BxSxHxK = rotary(k_BxSxHxK, positions_BxL, self.shape.rotary_fraction)
        scale = self.shape.head_dim ** -0.5
        scores_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK).astype(jnp.float32) * scale
        scores_BxHxLxS = jnp.where(mask_Bx1xLxS, scores_BxHxLxS, jnp.finfo(jnp.float32).min)
        probs_BxHxLxS = jax.nn.softmax(scores_BxHxLxS, axis=-1).astype(dtype)
        out_BxLxHxK = sharding.constrain(jnp.einsum("bhls,bshk->blhk", probs_BxHxLxS, v_BxSxHxK), names)
        out = jnp.einsum("blhk,hkd->bld", out_BxLxHxK, self.out_kernel[...].astype(dtype))
        return out + self.out_bias[...].astype(dtype)


class MLP(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
        self.in_kernel = _param(rngs, (d_model, d_ff), ("embed", "mlp"))
        self.in_bias = _param(rngs, (d_ff,), ("mlp",), init="zeros")
        self.out_kernel = _param(rngs, (d_ff, d_model), ("mlp", "embed"))
        self.out_bias = _param(rngs, (d_model,), ("embed",), init="zeros")

    def __call__(self, x_BxLxD: jax.Array, gate_BxLxF: jax.Array | None = None) -> jax.Array:
        dtype = x_BxLxD.dtype
        h_BxLxF = x_BxLxD @ self.in_kernel[...].astype(dtype) + self.in_bias[...].astype(dtype)
        h_BxLxF = sharding.constrain(jax.nn.gelu(h_BxLxF, approximate=False), ("batch", "length", "act_mlp"))
        if gate_BxLxF is not None:  # MemSinks: hidden units of other sequences' sinks are switched off
            h_BxLxF = h_BxLxF * gate_BxLxF.astype(dtype)
        return h_BxLxF @ self.out_kernel[...].astype(dtype) + self.out_bias[...].astype(dtype)


class Block(nnx.Module):
    def __init__(self, shape: ModelShape, *, rngs: nnx.Rngs):
        self.attention_norm = LayerNorm(shape.d_model, rngs=rngs)
        self.attention = Attention(shape, rngs=rngs)
        self.mlp_norm = LayerNorm(shape.d_model, rngs=rngs)
        self.mlp = MLP(shape.d_model, shape.d_ff, rngs=rngs)

    def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF=None):
        x_BxLxD = x_BxLxD + self.attention(self.attention_norm(x_BxLxD), mask_Bx1xLxS, positions_BxL)
        x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD), gate_BxLxF)
        return sharding.constrain(x_BxLxD, ("batch", "length", "act_embed"))


class Transformer(nnx.Module):
    """Causal LM (``causal=True``) or masked LM (bidirectional attention)."""

    def __init__(self, shape: ModelShape, *, causal: bool, rngs: nnx.Rngs, dtype: str = "float32"):
        shape.validate()
        self.shape = shape
        self.causal = causal
        self.dtype = jnp.dtype(dtype)
        self.embed = _param(rngs, (shape.vocab_size, shape.d_model), ("vocab", "embed"))
        if shape.positions == "learned":
            self.position_embed = _param(rngs, (shape.max_len, shape.d_model), ("positions", "embed"))
        # Named attributes rather than a list keep checkpoint paths plain strings ("block_00", ...).
        self.block_names = tuple(f"block_{i:02d}" for i in range(shape.num_layers))
        for name in self.block_names:
            setattr(self, name, Block(shape, rngs=rngs))
        self.final_norm = LayerNorm(shape.d_model, rngs=rngs)
        if not shape.tie_embeddings:
            self.unembed = _param(rngs, (shape.d_model, shape.vocab_size), ("embed", "vocab"))

    def __call__(self, tokens_BxL: jax.Array, *, valid_BxL: jax.Array | None = None,
                 mlp_gate_BxLxF: jax.Array | None = None) -> jax.Array:
        """Logits [B, L, V] in float32. ``valid_BxL`` marks real (non-padding) tokens; padded keys are masked."""
        batch, length = tokens_BxL.shape
        if length > self.shape.max_len:
            raise ValueError(f"sequence length {length} exceeds the position table (config.model.max_len="
                             f"{self.shape.max_len})")
        if valid_BxL is None:
            valid_BxL = jnp.ones_like(tokens_BxL, dtype=bool)
        positions_BxL = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x_BxLxD = self.embed[...][tokens_BxL].astype(self.dtype)
        if self.shape.positions == "learned":
            x_BxLxD = x_BxLxD + self.position_embed[...][:length].astype(self.dtype)
        x_BxLxD = sharding.constrain(x_BxLxD, ("batch", "length", "act_embed"))

        mask_Bx1xLxS = valid_BxL[:, None, None, :]
        if self.causal:
            mask_Bx1xLxS = mask_Bx1xLxS & jnp.tril(jnp.ones((length, length), bool))[None, None]
        for name in self.block_names:
            x_BxLxD = getattr(self, name)(x_BxLxD, mask_Bx1xLxS, positions_BxL, mlp_gate_BxLxF)

        x_BxLxD = self.final_norm(x_BxLxD)
        unembed_DxV = self.embed[...].T if self.shape.tie_embeddings else self.unembed[...]
        logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, unembed_DxV.astype(self.dtype))
        return sharding.constrain(logits_BxLxV.astype(jnp.float32), ("batch", "length", "act_vocab"))
