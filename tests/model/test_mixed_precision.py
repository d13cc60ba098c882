"""Mixed precision (config.model.dtype=bfloat16): the matmuls run in bfloat16 while parameters, optimizer state,
attention scores and softmax, logits, loss and metrics stay float32. bfloat16 training tracks float32 training
from the same initialisation and batches, and the step's memorization metrics keep their definition: recomputed
in NumPy from the bfloat16 model's own float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from memdyn import config as config_lib
from memdyn.data import build
from memdyn.train import steps as core

STEPS = 40
# Measured on this project's 2-core CPU (micro, 40 steps, lr 2e-3): losses fall from 5.567 to 4.68 (step 20); the
# largest |loss_bf16 - loss_fp32| over the 40 steps was 0.0040 (mean 0.0003). The tolerance is 5x that.
LOSS_TOLERANCE = 0.02


def _train(tmp_path, dtype: str):
    config = tiny_config(num_steps=STEPS, **{"model.size": "micro", "model.dtype": dtype, "optimizer.lr": 2e-3})
    run = core.build_run(config, build.prepare(config, str(tmp_path / dtype)))
    params, opt_state = core.init_state(run)
    step_fn = core.make_train_step(run)
    losses = []
    with run.context():
        for step in range(STEPS):
            batch = run.feeder.train_batch(step)
            params, opt_state, m = step_fn(params, opt_state, batch, np.int32(step))
            losses.append(float(m["loss"]))
    return run, params, opt_state, np.array(losses)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    return {dtype: _train(tmp, dtype) for dtype in ("float32", "bfloat16")}


@pytest.mark.slow
def test_bfloat16_training_tracks_float32(trained):
    fp32, bf16 = trained["float32"][3], trained["bfloat16"][3]
    assert fp32[0] == pytest.approx(bf16[0], abs=0.002)  # the same initial model and batch
    assert fp32[-1] < fp32[0] - 0.5  # it learned something worth comparing
    assert np.max(np.abs(bf16 - fp32)) < LOSS_TOLERANCE, np.abs(bf16 - fp32)
    assert not np.array_equal(bf16, fp32)  # and bfloat16 really computed in bfloat16


@pytest.mark.slow
def test_bfloat16_keeps_float32_master_weights_optimizer_state_and_logits(trained):
    run, params, opt_state, _ = trained["bfloat16"]
    for leaf in jax.tree.leaves(params) + [
        x for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.floating)
    ]:
        assert leaf.dtype == jnp.float32
    model = nnx.merge(run.graphdef, nnx.State(params))
    assert model.dtype == jnp.bfloat16
    inputs = jnp.asarray(run.feeder.train_batch(0)["tokens_BxL"])[:, :-1]
    assert model(inputs).dtype == jnp.float32
    # which matmuls run in bfloat16: the projections and MLPs; attention scores and logits accumulate in float32
    batch, length = inputs.shape
    shape = run.shape
    outputs = [
        eqn.outvars[0].aval
        for eqn in _equations(jax.make_jaxpr(lambda x: model(x))(inputs).jaxpr)
        if eqn.primitive.name == "dot_general"
    ]
    scores = [a for a in outputs if a.shape.count(length) == 2]  # [B, H, L, S] (heads may be split into groups)
    logits = outputs[-1:]  # the unembedding is the last matmul
    assert len(scores) == shape.num_layers and logits[0].shape == (batch, length, shape.vocab_size)
    assert {a.dtype for a in scores + logits} == {jnp.dtype(jnp.float32)}
    assert sum(a.dtype == jnp.bfloat16 for a in outputs) >= 6 * shape.num_layers  # q, k, v, out, mlp in, mlp out


def _equations(jaxpr):
    """Every equation of a jaxpr, those of nested jaxprs (pjit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


@pytest.mark.slow
def test_step_metrics_in_bfloat16_are_recomputed_from_the_models_own_logits(trained):
    """Exact match and loss of one bfloat16 step: the same numbers from the model's float32 logits in NumPy."""
    run, params, opt_state, _ = trained["bfloat16"]
    batch = run.feeder.train_batch(STEPS)
    with run.context():
        m = jax.device_get(core.make_forward(run)(params, batch, np.int32(STEPS)))
        model = nnx.merge(run.graphdef, nnx.State(params))
        tokens = np.asarray(jax.device_get(batch["tokens_BxL"]))
        pad = run.data.pad_id
        inputs = jnp.asarray(tokens[:, :-1])
        logits = np.asarray(jax.device_get(model(inputs, valid_BxL=inputs != pad)))
    targets, weights = tokens[:, 1:], (tokens[:, 1:] != pad)
    correct = (logits.argmax(-1) == targets) & weights
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    assert float(m["mem_update"]) == pytest.approx(correct.sum() / weights.sum(), abs=1e-6)
    np.testing.assert_allclose(m["exact_match_B"], correct.sum(1) / np.maximum(weights.sum(1), 1), atol=1e-6)
    assert float(m["loss"]) == pytest.approx((nll * weights).sum() / weights.sum(), rel=1e-5)


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="config.model.dtype='float16': expected one of"):
        config_lib.validate(tiny_config(**{"model.dtype": "float16"}))
