"""k-extractability (Biderman et al. 2023): does greedy decoding from a training sequence's first M tokens
reproduce its next N tokens?

Two kinds of quantity, from two kinds of computation:

* ``score`` — the fraction of the N positions where the greedy continuation G equals the true continuation S
  (position-wise, Biderman's score). It needs real greedy decoding: ``greedy_decode`` (KV cache, one prefill and
  N - 1 single-token steps); ``greedy_decode_naive`` recomputes the whole sequence every step and is the reference.
* ``memorized`` (score == 1, i.e. k-extractable with k = N) and ``prefix_match`` (number of leading positions
  where G equals S) — from ONE teacher-forced forward pass (``teacher_forced_extractability``): greedy decoding
  reproduces S_{M+i} exactly when the argmax at position M-1+i given the true tokens is S_{M+i} and all earlier
  ones were too (by induction, the greedy sequence and the true sequence agree up to there).

``extractability`` returns both. Models are passed as memdyn keeps them: ``graphdef, state = nnx.split(model)``,
``params = nnx.to_pure_dict(state)``. Only causal LMs decode; prompts are full-length (no padding).
The cached and full passes run the same attention code but on different matrix shapes, so their logits agree to
rounding (~1e-7 in float32), not bit for bit: they can pick different argmaxes only where two logits tie to within
that, which is likelier in bfloat16.

Shape suffixes: B batch, M prompt length, N new (continuation) tokens, T sequence length, V vocabulary,
F MLP hidden units.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from memdyn.model.transformer import Transformer


def _merge(graphdef: nnx.GraphDef, params) -> Transformer:
    model = nnx.merge(graphdef, nnx.State(params))
    if not model.causal:
        raise ValueError("extraction needs a causal LM; this Transformer is a masked LM (causal=False)")
    return model


def _check_lengths(model: Transformer, prompt_len: int, num_new: int) -> None:
    if prompt_len < 1 or num_new < 1:
        raise ValueError(f"prompt length {prompt_len} and number of new tokens {num_new} must be positive")
    # The last generated token is never fed back, so M + N - 1 positions are run.
    if prompt_len + num_new - 1 > model.shape.max_len:
        raise ValueError(
            f"prompt length {prompt_len} + {num_new} new tokens - 1 exceeds the position table "
            f"(config.model.max_len={model.shape.max_len})"
        )


def greedy_decode(
    graphdef: nnx.GraphDef, params, prompts_BxM: jax.Array, num_new: int, *, mlp_gate_BxF: jax.Array | None = None
) -> jax.Array:
    """Greedy continuation [B, N] (int32) of full-length prompts, with the KV cache (jitted).

    ``mlp_gate_BxF`` optionally gates the MLP hidden units of each sequence at every position (MemSinks).
    """
    return _greedy_decode(graphdef, params, prompts_BxM, num_new, mlp_gate_BxF)


# The public functions call jitted ones with canonical positional arguments: jit caches on how arguments are
# passed (positional, keyword, omitted), and one spelling means one compilation.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy_decode(graphdef, params, prompts_BxM, num_new, mlp_gate_BxF):
    model = _merge(graphdef, params)
    batch, prompt_len = prompts_BxM.shape
    _check_lengths(model, prompt_len, num_new)
    logits_BxMxV, cache = model.prefill(prompts_BxM, prompt_len + num_new - 1, mlp_gate_BxF=mlp_gate_BxF)
    new_BxN = jnp.zeros((batch, num_new), jnp.int32).at[:, 0].set(jnp.argmax(logits_BxMxV[:, -1], axis=-1))
    layers = model.layer_slices()  # a scanned model's per-layer weights, sliced once, not once per token

    def step(i, carry):
        new_BxN, cache = carry
        # Merged per iteration so the loop body traces its own module from the (closed-over) arrays.
        logits_BxV, cache = _merge(graphdef, params).decode_step(
            new_BxN[:, i - 1], cache, prompt_len + i - 1, mlp_gate_BxF=mlp_gate_BxF, layers=layers
        )
        return new_BxN.at[:, i].set(jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)), cache

    new_BxN, _ = jax.lax.fori_loop(1, num_new, step, (new_BxN, cache))
    return new_BxN


def greedy_decode_naive(
    graphdef: nnx.GraphDef, params, prompts_BxM: jax.Array, num_new: int, *, mlp_gate_BxF: jax.Array | None = None
) -> jax.Array:
    """Reference for ``greedy_decode`` (jitted): every step runs the full forward pass over prompt + continuation.

    The sequence has a fixed length M + N - 1 (one compilation); not-yet-generated slots hold 0, which the causal
    mask keeps out of every position that is read.
    """
    return _greedy_decode_naive(graphdef, params, prompts_BxM, num_new, mlp_gate_BxF)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy_decode_naive(graphdef, params, prompts_BxM, num_new, mlp_gate_BxF):
    model = _merge(graphdef, params)
    batch, prompt_len = prompts_BxM.shape
    _check_lengths(model, prompt_len, num_new)
    gate_BxTxF = (
        None
        if mlp_gate_BxF is None
        else jnp.broadcast_to(mlp_gate_BxF[:, None, :], (batch, prompt_len + num_new - 1, mlp_gate_BxF.shape[-1]))
    )

    def step(i, new_BxN):
        sequence_BxT = jnp.concatenate([prompts_BxM.astype(jnp.int32), new_BxN[:, :-1]], axis=1)
        logits_BxTxV = _merge(graphdef, params)(sequence_BxT, mlp_gate_BxLxF=gate_BxTxF)
        logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, prompt_len - 1 + i, axis=1, keepdims=False)
        return new_BxN.at[:, i].set(jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))

    return jax.lax.fori_loop(0, num_new, step, jnp.zeros((batch, num_new), jnp.int32))


def teacher_forced_extractability(
    graphdef: nnx.GraphDef,
    params,
    tokens_BxT: jax.Array,
    prompt_len: int = 32,
    num_new: int = 32,
    *,
    mlp_gate_BxF: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``memorized`` [B] (bool), ``prefix_match`` [B] (int32) and ``loss`` [B] (float32) from one forward pass on
    tokens[:, :M+N-1] (jitted).

    loss = the mean teacher-forced cross-entropy (nats) of the N continuation tokens. prefix_match = the number
    of leading continuation positions whose teacher-forced argmax is the true token, which equals the length of the
    greedy continuation's longest prefix agreeing with the truth; memorized = prefix_match == N (Biderman's score
    == 1).
    """
    return _teacher_forced(graphdef, params, tokens_BxT, prompt_len, num_new, mlp_gate_BxF)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _teacher_forced(graphdef, params, tokens_BxT, prompt_len, num_new, mlp_gate_BxF):
    model = _merge(graphdef, params)
    _check_lengths(model, prompt_len, num_new)
    _check_tokens(tokens_BxT, prompt_len, num_new)
    inputs_BxT = tokens_BxT[:, : prompt_len + num_new - 1]
    gate_BxTxF = (
        None
        if mlp_gate_BxF is None
        else jnp.broadcast_to(mlp_gate_BxF[:, None, :], inputs_BxT.shape + mlp_gate_BxF.shape[-1:])
    )
    continuation_logits_BxNxV = model(inputs_BxT, mlp_gate_BxLxF=gate_BxTxF, logits_from=prompt_len - 1)
    truth_BxN = tokens_BxT[:, prompt_len : prompt_len + num_new]
    match_BxN = jnp.argmax(continuation_logits_BxNxV, axis=-1) == truth_BxN
    prefix_match_B = jnp.cumprod(match_BxN.astype(jnp.int32), axis=1).sum(axis=1)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(continuation_logits_BxNxV, truth_BxN).mean(axis=1)
    return {"memorized": prefix_match_B == num_new, "prefix_match": prefix_match_B, "loss": loss_B}


def extractability(
    graphdef: nnx.GraphDef,
    params,
    batch: dict[str, jax.Array],
    prompt_len: int = 32,
    num_new: int = 32,
    *,
    mlp_gate_BxF: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Biderman's extractability of each sequence's tokens [M, M+N) from its first M tokens, for a feeder batch
    (``memdyn.data.feeder``; at least ``tokens_BxL``, L >= M + N).

    Returns ``score`` [B] (float32, fraction of positions where the greedy continuation equals the truth; from
    ``greedy_decode``), ``continuation`` [B, N] (the greedy tokens), ``memorized`` [B] / ``prefix_match`` [B]
    from ``teacher_forced_extractability`` (one pass; see the module docstring for why they agree with decoding),
    and the batch's ``example_ids_B`` / ``doc_ids_B`` when it has them, so rows line up with results.
    """
    if not isinstance(batch, dict) or "tokens_BxL" not in batch:
        raise ValueError("extractability takes a batch: a dict with tokens_BxL (see memdyn.data.feeder)")
    _check_tokens(batch["tokens_BxL"], prompt_len, num_new)
    return _extractability(graphdef, params, batch, prompt_len, num_new, mlp_gate_BxF)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _extractability(graphdef, params, batch, prompt_len, num_new, mlp_gate_BxF):
    tokens_BxT = batch["tokens_BxL"]
    continuation_BxN = greedy_decode(graphdef, params, tokens_BxT[:, :prompt_len], num_new, mlp_gate_BxF=mlp_gate_BxF)
    truth_BxN = tokens_BxT[:, prompt_len : prompt_len + num_new]
    score_B = (continuation_BxN == truth_BxN).mean(axis=1, dtype=jnp.float32)
    forced = teacher_forced_extractability(graphdef, params, tokens_BxT, prompt_len, num_new, mlp_gate_BxF=mlp_gate_BxF)
    ids = {k: batch[k] for k in ("example_ids_B", "doc_ids_B") if k in batch}
    return {"score": score_B, "continuation": continuation_BxN, **forced, **ids}


def _check_tokens(tokens_BxT, prompt_len: int, num_new: int) -> None:
    if np.ndim(tokens_BxT) != 2 or np.shape(tokens_BxT)[1] < prompt_len + num_new:
        raise ValueError(
            f"tokens of shape {np.shape(tokens_BxT)}: need [B, T] with T >= prompt length "
            f"{prompt_len} + {num_new} new tokens"
        )
