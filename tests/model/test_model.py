"""Model behaviour: causal masking, masked-LM masking and loss, parameter counts of the presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from memdyn.model import sizes
from memdyn.model.transformer import Transformer
from memdyn.train import metrics, objective

SHAPE = sizes.ModelShape(num_layers=2, d_model=32, num_heads=4, d_ff=64, vocab_size=50, max_len=16)


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_causal_model_ignores_future_tokens(positions):
    # untied, so that the embedding table feeds only the inputs (the gradient check below relies on it)
    shape = dataclasses.replace(SHAPE, positions=positions, rotary_fraction=0.5, tie_embeddings=False)
    model = Transformer(shape, causal=True, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 4, 50)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % 50)
    logits, logits_changed = model(tokens), model(changed)
    np.testing.assert_array_equal(logits[:, :7], logits_changed[:, :7])
    assert not np.allclose(logits[:, 7:], logits_changed[:, 7:])

    # and no gradient flows from future token embeddings into an earlier position's output
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)

    def first_logits(embed):
        return nnx.merge(graphdef, nnx.State(dict(params, embed=embed)))(tokens)[:, 5].sum()

    grad = jax.grad(first_logits)(params["embed"])
    future_only = set(np.asarray(tokens[:, 6:]).ravel()) - set(np.asarray(tokens[:, :6]).ravel())
    assert future_only, "test needs tokens that occur only in the future"
    for t in future_only:
        assert np.all(grad[t] == 0)


def test_masked_model_sees_both_directions_and_ignores_padding():
    model = Transformer(SHAPE, causal=False, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 4, 50)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 5) % 50)
    assert not np.allclose(model(tokens)[:, 2], model(changed)[:, 2])
    # padded keys are masked: changing a padded token changes nothing at real positions
    valid = jnp.arange(12)[None] < 8
    padded_a = model(tokens, valid_BxL=jnp.broadcast_to(valid, tokens.shape))
    padded_b = model(changed, valid_BxL=jnp.broadcast_to(valid, tokens.shape))
    np.testing.assert_allclose(padded_a[:, :8], padded_b[:, :8], atol=1e-6)


def test_mlp_gate_switches_hidden_units_off():
    model = Transformer(SHAPE, causal=True, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 4, 50)
    ones = jnp.ones((2, 12, SHAPE.d_ff))
    np.testing.assert_allclose(model(tokens, mlp_gate_BxLxF=ones), model(tokens), atol=1e-6)
    half = ones.at[..., SHAPE.d_ff // 2 :].set(0.0)
    assert not np.allclose(model(tokens, mlp_gate_BxLxF=half), model(tokens))


def test_sequence_longer_than_position_table_is_refused():
    model = Transformer(SHAPE, causal=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len=16"):
        model(jnp.zeros((1, 17), jnp.int32))


def test_mlm_masking_statistics():
    cfg = objective.MaskingConfig()
    tokens = jax.random.randint(jax.random.key(0), (256, 256), 4, 1000)
    tokens = tokens.at[:, 200:].set(cfg.pad_id)  # right padding must never be selected
    inputs, targets, weights, scored = objective.masked_lm(tokens, jax.random.key(1), 1000, cfg)
    inputs, targets, weights, scored, tokens = map(np.asarray, (inputs, targets, weights, scored, tokens))
    selected = weights > 0
    real = tokens != cfg.pad_id
    assert not selected[~real].any()
    assert abs(selected[real].mean() - 0.15) < 0.005
    masked = selected & (inputs == cfg.mask_id)
    unchanged = selected & (inputs == tokens)
    randomized = selected & ~masked & ~unchanged
    n = selected.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01
    # a random replacement can hit the original token (prob 1/996), which then counts as unchanged
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert abs(randomized.sum() / n - 0.1) < 0.01
    assert (inputs[~selected] == tokens[~selected]).all()
    np.testing.assert_array_equal(targets, tokens)
    assert (inputs[randomized] >= cfg.num_special).all()
    # Memorization is scored at the <mask> positions only (the paper's context set), or at every selected one.
    np.testing.assert_array_equal(scored > 0, masked)
    everything = objective.masked_lm(
        jnp.asarray(tokens), jax.random.key(1), 1000, dataclasses.replace(cfg, scored="selected")
    )
    np.testing.assert_array_equal(np.asarray(everything.score_weights_BxL), weights)
    np.testing.assert_array_equal(np.asarray(everything.inputs_BxL), inputs)  # the same masks either way


def test_scored_positions_differ_from_loss_positions():
    """M, per-example loss and token counts follow the scored positions; the objective's loss the loss positions."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(2, 12, 9)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, 9, size=(2, 12)))
    loss_w = (rng.random((2, 12)) < 0.6).astype(np.float32)
    score_w = loss_w * (rng.random((2, 12)) < 0.5)
    m = metrics.token_metrics(logits, targets, jnp.asarray(loss_w), jnp.asarray(score_w))
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
    correct = np.asarray(logits).argmax(-1) == np.asarray(targets)
    np.testing.assert_allclose(m["loss"], (ce * loss_w).sum() / loss_w.sum(), rtol=1e-5)
    np.testing.assert_allclose(m["mem_update"], (correct * score_w).sum() / score_w.sum(), rtol=1e-6)
    np.testing.assert_allclose(m["loss_B"], (ce * score_w).sum(1) / np.maximum(score_w.sum(1), 1), rtol=1e-5)
    np.testing.assert_array_equal(m["num_tokens_B"], score_w.sum(1))


def test_loss_and_metrics_count_only_weighted_positions():
    logits = jax.random.normal(jax.random.key(0), (3, 10, 20))
    targets = jax.random.randint(jax.random.key(1), (3, 10), 0, 20)
    weights = (jax.random.uniform(jax.random.key(2), (3, 10)) < 0.3).astype(jnp.float32)
    noise = jax.random.normal(jax.random.key(3), logits.shape) * 5
    changed = jnp.where(weights[..., None] > 0, logits, logits + noise)  # change only unweighted positions
    a, b = metrics.token_metrics(logits, targets, weights), metrics.token_metrics(changed, targets, weights)
    for key in ("loss", "mem_update", "exact_match_B", "loss_B"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_mem_update_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 16, 30)).astype(np.float32)
    targets = rng.integers(0, 30, size=(4, 16))
    logits[0, :8, :] = 0
    logits[0, np.arange(8), targets[0, :8]] = 1.0  # example 0 gets its first half right
    weights = (rng.random((4, 16)) < 0.8).astype(np.float32)
    weights[3] = 0  # an example with nothing to count
    m = metrics.token_metrics(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    correct = (logits.argmax(-1) == targets) * weights
    np.testing.assert_allclose(m["mem_update"], correct.sum() / weights.sum(), rtol=1e-6)
    per_example = correct.sum(1) / np.maximum(weights.sum(1), 1)
    np.testing.assert_allclose(m["exact_match_B"], per_example, rtol=1e-6)
    assert m["exact_match_B"][3] == 0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(m["loss"], (nll * weights).sum() / weights.sum(), rtol=1e-5)


PUBLISHED = {  # Hugging Face model cards / configs
    "opt-125m": 125_239_296,
    "opt-1.3b": 1_315_758_080,
    "opt-2.7b": 2_651_596_800,
    "opt-6.7b": 6_658_473_984,
    "opt-13b": 12_853_473_280,
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paper_preset_parameter_counts(name):
    assert sizes.count_params(sizes.PAPER_PRESETS[name]) == PUBLISHED[name]


def test_opt_355m_is_the_nominal_size():
    # HF's opt-350m adds 512-d embedding projections (331M); Tirumala's 24x1024 shape is the nominal 355M.
    assert abs(sizes.count_params(sizes.PAPER_PRESETS["opt-355m"]) - 355e6) / 355e6 < 0.01


@pytest.mark.parametrize("name", ["opt-125m", "pythia-160m"] + list(sizes.CPU_PRESETS))
def test_formula_equals_model_parameters(name):
    shape = sizes.preset_shape(name, vocab_size=2048, max_len=128)
    abstract = nnx.eval_shape(lambda: Transformer(shape, causal=True, rngs=nnx.Rngs(0)))
    actual = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert actual == sizes.count_params(shape)


def test_cpu_presets_span_the_cpu_scale():
    counts = [sizes.count_params(sizes.preset_shape(n, vocab_size=2048, max_len=128)) for n in sizes.CPU_PRESETS]
    assert counts == sorted(counts)
    assert 0.05e6 < counts[0] < 0.2e6 and 20e6 < counts[-1] < 40e6


def _numpy_attention(attn, x_BxLxD, mask_BxLxS):
    """Softmax attention of one Attention module (learned positions: no rotary), in float64 NumPy."""
    p = {
        name: np.asarray(getattr(attn, name)[...], np.float64)
        for name in (
            "query_kernel",
            "query_bias",
            "key_kernel",
            "key_bias",
            "value_kernel",
            "value_bias",
            "out_kernel",
            "out_bias",
        )
    }
    x = np.asarray(x_BxLxD, np.float64)
    q, k, v = (np.einsum("bld,dhk->blhk", x, p[f"{n}_kernel"]) + p[f"{n}_bias"] for n in ("query", "key", "value"))
    scores = np.einsum("blhk,bshk->bhls", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask_BxLxS[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhls,bshk,hkd->bld", probs, v, p["out_kernel"]) + p["out_bias"]


def _max_attention_weight(attn, x_BxLxD, mask_BxLxS):
    q, k = (
        np.einsum("bld,dhk->blhk", np.asarray(x_BxLxD, np.float64), np.asarray(getattr(attn, f"{n}_kernel")[...]))
        for n in ("query", "key")
    )
    scores = np.where(mask_BxLxS[:, None], np.einsum("blhk,bshk->bhls", q, k) / np.sqrt(q.shape[-1]), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return np.nanmax(probs / probs.sum(-1, keepdims=True))


@pytest.mark.parametrize("implementation", ["einsum", "xla"])
@pytest.mark.parametrize("masks", ["causal", "causal+padding", "block-causal", "bidirectional+padding"])
def test_attention_equals_softmax_attention(masks, implementation):
    """memdyn's einsum attention and jax.nn.dot_product_attention ("xla"), with each mask memdyn builds, equal
    softmax attention recomputed in NumPy."""
    from memdyn.model.layers import Attention

    shape = sizes.ModelShape(num_layers=1, d_model=32, num_heads=4, d_ff=64, vocab_size=50, max_len=16)
    attn = Attention(shape, rngs=nnx.Rngs(params=1), implementation=implementation)
    for name in ("query_kernel", "key_kernel"):  # sharp attention, not the near-uniform one of a fresh init
        getattr(attn, name)[...] = getattr(attn, name)[...] * 30
    batch, length = 3, 12
    x = jax.random.normal(jax.random.key(0), (batch, length, shape.d_model))
    lengths = np.array([12, 9, 5]) if "padding" in masks else np.full(batch, length)
    valid_BxS = np.arange(length)[None, :] < lengths[:, None]
    mask = np.repeat(valid_BxS[:, None, :], length, 1)
    if masks.startswith("causal") or masks == "block-causal":
        mask &= np.tril(np.ones((length, length), bool))[None]
    if masks == "block-causal":  # two documents packed in a row: 0..6 and 7..11
        segment = (np.arange(length) >= 7).astype(int)
        mask &= segment[None, :, None] == segment[None, None, :]
    out = np.asarray(attn(x, jnp.asarray(mask[:, None]), jnp.broadcast_to(jnp.arange(length), (batch, length))))
    expected = _numpy_attention(attn, x, mask)
    assert _max_attention_weight(attn, x, mask) > 0.5  # the check has teeth: some query attends mostly to one key
    rows = mask.any(-1)  # a query with no key to attend to (padding, masked LMs) has no defined output
    np.testing.assert_allclose(out[rows], expected[rows], rtol=1e-5, atol=1e-5)


def test_attention_implementation_is_validated():
    from memdyn import config as config_lib

    with pytest.raises(ValueError, match="config.model.attention='flash': expected one of"):
        config_lib.validate(tiny_config(**{"model.attention": "flash"}))
    with pytest.raises(ValueError, match="config.model.attention='cudnn' needs config.model.dtype='bfloat16'"):
        config_lib.validate(tiny_config(**{"model.attention": "cudnn"}))


def test_gelu_and_softmax_equal_their_definitions_forward_and_backward():
    """memdyn's GELU (erf form) and softmax (custom VJP) against the exact GELU x * Phi(x) and softmax in float64
    NumPy, values and gradients."""
    from math import erf

    from memdyn.model.cpu_kernels import gelu, softmax

    x = np.linspace(-8, 8, 4001).astype(np.float32)
    x64 = x.astype(np.float64)
    phi = 0.5 * (1 + np.vectorize(erf)(x64 / np.sqrt(2)))
    pdf = np.exp(-0.5 * x64**2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(gelu(jnp.asarray(x)), x64 * phi, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: gelu(v).sum())(jnp.asarray(x)), phi + x64 * pdf, rtol=1e-5, atol=1e-6)

    s = np.asarray(jax.random.normal(jax.random.key(1), (3, 5, 7))) * 4
    g = np.asarray(jax.random.normal(jax.random.key(2), (3, 5, 7)))
    p = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax(jnp.asarray(s)), p, rtol=1e-6, atol=1e-7)
    grad = jax.vjp(softmax, jnp.asarray(s))[1](jnp.asarray(g))[0]
    np.testing.assert_allclose(grad, p * (g - (g * p).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    masked = np.where(np.arange(7) < 4, s, np.finfo(np.float32).min)  # masked keys: probability 0, gradient 0
    assert np.all(np.asarray(softmax(jnp.asarray(masked)))[..., 4:] == 0)


def test_stored_residual_gradient_is_the_same_gradient_and_a_barrier_on_the_cpu():
    """store_gradient changes nothing in value or gradient (bitwise), and the compiled CPU step keeps one
    conditional per stored residual gradient (two per sequential block) for XLA's fusion not to cross."""
    from memdyn.model.cpu_kernels import store_gradient

    x = jax.random.normal(jax.random.key(0), (4, 8))
    f = lambda v: (jnp.tanh(v) ** 2).sum()  # noqa: E731
    np.testing.assert_array_equal(jax.grad(lambda v: f(store_gradient(v)))(x), jax.grad(f)(x))
    bad = x.at[0, 0].set(jnp.nan)  # a non-finite gradient stays non-finite
    assert np.isnan(np.asarray(jax.grad(lambda v: f(store_gradient(v)))(bad))).any()

    model = Transformer(SHAPE, causal=True, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)
    tokens = jnp.zeros((2, 8), jnp.int32)

    def loss(p):
        return nnx.merge(graphdef, p)(tokens).mean()

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert hlo.count(" conditional(") == 2 * SHAPE.num_layers


def test_cpu_kernels_and_plain_ops_are_the_same_model():
    """config.model.cpu_kernels: the CPU kernels ("on") and plain JAX ops ("off") give the same logits and gradients
    up to rounding, only the kernels compile the stored gradient's conditionals, "auto" follows JAX's default
    backend (decided when the model is built), and a bad value is refused naming the field."""
    from memdyn import config as config_lib
    from memdyn.model import cpu_kernels

    tokens = jax.random.randint(jax.random.key(1), (2, 12), 4, 50)
    results = {}
    for choice in ("on", "off"):
        model = Transformer(SHAPE, causal=True, rngs=nnx.Rngs(params=0), cpu_kernels=choice)
        assert model.ops == (cpu_kernels.CPU_OPS if choice == "on" else cpu_kernels.PLAIN_OPS)
        graphdef, params = nnx.split(model)

        def loss(p, graphdef=graphdef):
            return nnx.merge(graphdef, p)(tokens).std()

        value, grads = jax.value_and_grad(loss)(params)
        hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
        results[choice] = value, grads, hlo.count(" conditional(")
    np.testing.assert_allclose(results["on"][0], results["off"][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results["on"][1]), jax.tree.leaves(results["off"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert (results["on"][2], results["off"][2]) == (2 * SHAPE.num_layers, 0)

    auto = Transformer(SHAPE, causal=True, rngs=nnx.Rngs(params=0)).ops
    assert auto.cpu_kernels == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError, match=r"config.model.cpu_kernels='True': expected one of \('auto', 'on', 'off'\)"):
        config_lib.validate(tiny_config(**{"model.cpu_kernels": "True"}))
