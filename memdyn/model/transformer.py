"""One Transformer for causal and masked language modelling (Flax NNX).

Pre-LayerNorm blocks with multi-head attention and a GELU or SwiGLU MLP (``memdyn.model.layers``), sequential or
parallel residual (GPT-NeoX); learned or rotary positions; tied or untied embeddings. The MLP takes an optional
per-token gate over its hidden units, ``mlp_gate_BxLxF`` (MemSinks' sequence-tied masks, see
``memdyn.studies.memsinks.masks``), and attention optional per-token segment ids (packed documents). Every
parameter carries logical axis names (see ``memdyn.model.sharding``). The math runs CPU-tuned kernels or plain JAX
ops (``memdyn.model.cpu_kernels``), chosen once when the model is built (``cpu_kernels``). Converting parameters
between the unrolled and the scanned layout is ``memdyn.model.layout``.

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

from memdyn.model import cpu_kernels as kernels
from memdyn.model import sharding
from memdyn.model.layers import ATTENTION_IMPLEMENTATIONS, MLP, Attention, LayerNorm, param
from memdyn.model.sizes import ModelShape

# Rematerialisation (config.model.remat): what each block keeps for the backward pass; the rest is recomputed.
REMAT_POLICIES = {
    "none": None,  # no remat: every activation is kept
    "block": jax.checkpoint_policies.nothing_saveable,  # only each block's input: the least memory
    "dots": jax.checkpoint_policies.dots_saveable,  # matmul outputs kept, elementwise work recomputed
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # as dots, less attention
}


class Block(nnx.Module):
    def __init__(self, shape: ModelShape, *, rngs: nnx.Rngs, attention: str = "einsum", ops: kernels.Ops | None = None):
        self.parallel_residual = shape.parallel_residual
        self.ops = ops = ops or kernels.ops()
        self.attention_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        self.attention = Attention(shape, rngs=rngs, implementation=attention, ops=ops)
        self.mlp_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        self.mlp = MLP(shape.d_model, shape.d_ff, shape.mlp, rngs=rngs, ops=ops)

    def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF=None):
        return self.with_kv(x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF)[0]

    def with_kv(
        self, x_BxLxD, mask_Bx1xLxS, positions_BxL, gate_BxLxF=None, cache_kv=None, start=0, grad_gate_BxLxF=None
    ):
        """Block output and the attention's keys/values (see ``Attention.with_kv`` for ``cache_kv``)."""
        store_gradient = self.ops.store_gradient  # the residual stream's gradient, once per sublayer (CPU kernels)
        x_BxLxD = store_gradient(x_BxLxD)
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
        cpu_kernels: str | bool | None = "auto",
    ):
        """``gated_layers``: the layers whose MLP takes the MLP gates (MemSinks' sinks); empty: every layer.
        ``attention``: the attention implementation (see ``Attention``); ``remat``: a ``REMAT_POLICIES`` name,
        applied to every block of the full forward pass (same numbers, less activation memory, more compute).
        ``scan_layers``: the blocks are one module, ``blocks``, whose parameters carry a leading ``layers`` axis,
        and the forward pass is a scan over it (compiled once, whatever the depth); else ``block_00``, ...
        ``cpu_kernels``: "auto" (on when JAX's default backend is the CPU), "on"/True or "off"/False: whether the
        math runs ``memdyn.model.cpu_kernels``' kernels or plain JAX ops, decided here, once."""
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"config.model.attention={attention!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
        if remat not in REMAT_POLICIES:
            raise ValueError(f"config.model.remat={remat!r}: expected one of {tuple(REMAT_POLICIES)}")
        self.remat = remat
        self.scan_layers = scan_layers
        self.ops = ops = kernels.ops(cpu_kernels)
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
        self.embed = param(rngs, (shape.vocab_size, shape.d_model), ("vocab", "embed"))
        if shape.positions == "learned":
            self.position_embed = param(rngs, (shape.max_len, shape.d_model), ("positions", "embed"))
        if scan_layers:

            @nnx.split_rngs(splits=shape.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked_blocks(rngs):
                return Block(shape, rngs=rngs, attention=attention, ops=ops)

            self.blocks = stacked_blocks(rngs)
            self.block_names = ()
        else:
            # Named attributes rather than a list keep checkpoint paths plain strings ("block_00", ...).
            self.block_names = tuple(f"block_{i:02d}" for i in range(shape.num_layers))
            for name in self.block_names:
                setattr(self, name, Block(shape, rngs=rngs, attention=attention, ops=ops))
        self.final_norm = LayerNorm(shape.d_model, shape.norm_eps, rngs=rngs)
        if not shape.tie_embeddings:
            self.unembed = param(rngs, (shape.d_model, shape.vocab_size), ("embed", "vocab"))

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
