"""KV-cache decoding and k-extractability: cached greedy = naive greedy, one-pass quantities = decoded ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memdyn.extraction import extractability as extract
from memdyn.model import sizes
from memdyn.model.transformer import Transformer

BASE = sizes.ModelShape(num_layers=2, d_model=32, num_heads=4, d_ff=64, vocab_size=64, max_len=16)
SHAPES = {  # the two position schemes, one tied and one untied
    "learned-tied": dataclasses.replace(BASE, positions="learned", tie_embeddings=True),
    "rotary-untied": dataclasses.replace(BASE, positions="rotary", rotary_fraction=0.5, tie_embeddings=False),
}
M = N = 8
B = 8  # one batch size everywhere, so that jitted functions compile once per shape


def split(model):
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def leading_matches(a_BxN, b_BxN):
    equal = np.asarray(a_BxN) == np.asarray(b_BxN)
    return np.where(equal.all(1), equal.shape[1], np.argmin(equal, axis=1))


def check_extractability(graphdef, params, tokens_BxT):
    """Cached = naive greedy; score by hand; one-pass memorized/prefix_match = those of the decoded tokens."""
    result = extract.extractability(graphdef, params, {"tokens_BxL": tokens_BxT}, M, N)
    naive = extract.greedy_decode_naive(graphdef, params, tokens_BxT[:, :M], N)
    np.testing.assert_array_equal(result["continuation"], naive)
    truth = np.asarray(tokens_BxT[:, M : M + N])
    continuation = np.asarray(result["continuation"])
    np.testing.assert_array_equal(result["score"], (continuation == truth).sum(1) / N)
    prefix = leading_matches(continuation, truth)
    np.testing.assert_array_equal(result["prefix_match"], prefix)
    np.testing.assert_array_equal(result["memorized"], prefix == N)
    np.testing.assert_array_equal(result["memorized"], np.asarray(result["score"]) == 1.0)
    return result


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_prefill_and_decode_steps_reproduce_the_full_forward(name):
    graphdef, params = split(Transformer(SHAPES[name], causal=True, rngs=nnx.Rngs(0)))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    valid = jnp.arange(10)[None] >= jnp.array([[0], [3]])  # second prompt left-padded: its first 3 keys masked
    gate = (jax.random.uniform(jax.random.key(2), (2, BASE.d_ff)) < 0.7).astype(jnp.float32)

    @jax.jit  # one compilation is cheaper than dispatching each new op shape eagerly
    def full_and_incremental(params):
        model = nnx.merge(graphdef, nnx.State(params))
        full = model(tokens, valid_BxL=valid, mlp_gate_BxLxF=jnp.broadcast_to(gate[:, None], (2, 10, BASE.d_ff)))
        logits, cache = model.prefill(tokens[:, :7], 12, valid_BxM=valid[:, :7], mlp_gate_BxF=gate)
        step_logits = []
        for t in range(7, 10):
            logits_BxV, cache = model.decode_step(tokens[:, t], cache, t, mlp_gate_BxF=gate)
            step_logits.append(logits_BxV)
        return full, jnp.concatenate([logits, jnp.stack(step_logits, axis=1)], axis=1), cache

    full, incremental, cache = full_and_incremental(params)
    real = np.asarray(valid)  # a padded query attends to nothing real: its output is arbitrary
    np.testing.assert_allclose(np.asarray(incremental)[real], np.asarray(full)[real], atol=1e-5)
    assert len(cache.keys) == len(cache.values) == 2  # one [B, S, H, K] array per layer
    assert all(a.shape == (2, 12, 4, 8) for a in cache.keys + cache.values)
    assert cache.valid_BxS.tolist() == np.pad(valid, ((0, 0), (0, 2))).tolist()


def test_masked_lm_cannot_decode():
    model = Transformer(BASE, causal=False, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((2, M + N), jnp.int32)
    with pytest.raises(ValueError, match="causal"):
        model.prefill(tokens[:, :M], M + N)
    with pytest.raises(ValueError, match="causal"):
        model.decode_step(tokens[:, 0], None, M)
    graphdef, params = split(model)
    for fn in (extract.greedy_decode, extract.greedy_decode_naive):
        with pytest.raises(ValueError, match="causal"):
            fn(graphdef, params, tokens[:, :M], N)
    with pytest.raises(ValueError, match="causal"):
        extract.extractability(graphdef, params, {"tokens_BxL": tokens}, M, N)


def test_lengths_are_checked():
    graphdef, params = split(Transformer(BASE, causal=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="max_len=16"):
        extract.greedy_decode(graphdef, params, jnp.zeros((1, 12), jnp.int32), 6)
    with pytest.raises(ValueError, match="T >= prompt length"):
        extract.extractability(graphdef, params, {"tokens_BxL": jnp.zeros((1, 15), jnp.int32)}, M, N)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_random_model_cached_greedy_equals_naive_and_one_pass_equals_decoding(name):
    graphdef, params = split(Transformer(SHAPES[name], causal=True, rngs=nnx.Rngs(0)))
    random_tokens = jax.random.randint(jax.random.key(1), (B, M + N), 0, 64)
    greedy = np.asarray(check_extractability(graphdef, params, random_tokens)["continuation"])
    # Sequences whose continuation is the model's own greedy output, corrupted at position j_b: example b must
    # have prefix_match j_b, and only the uncorrupted ones are memorized.
    first_wrong = np.array([0, 1, 2, 3, 5, 7, N, N])
    truth = greedy.copy()
    for b, j in enumerate(first_wrong):
        if j < N:
            truth[b, j] = (truth[b, j] + 1) % 64
    result = check_extractability(graphdef, params, jnp.concatenate([random_tokens[:, :M], truth], axis=1))
    np.testing.assert_array_equal(result["prefix_match"], first_wrong)
    np.testing.assert_array_equal(result["continuation"], greedy)


def test_trained_model_memorizes_its_repeated_sequences():
    shape = SHAPES["rotary-untied"]
    model = Transformer(shape, causal=True, rngs=nnx.Rngs(0))
    graphdef, params = split(model)
    sequences = jax.random.randint(jax.random.key(3), (B, M + N), 0, 64)
    seen = sequences[: B // 2]  # trained on; the other half is never seen
    tx = optax.adam(1e-2)

    @jax.jit
    def train_step(params, opt_state):
        def loss_fn(params):
            logits = nnx.merge(graphdef, nnx.State(params))(seen[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, seen[:, 1:]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(40):
        params, opt_state = train_step(params, opt_state)
    result = check_extractability(graphdef, params, sequences)
    memorized = np.asarray(result["memorized"])
    assert memorized[: B // 2].any() and not memorized[B // 2 :].any(), result
