"""Features for big models, checked on the CPU: rematerialisation (config.model.remat) changes no number, and
gradient accumulation over microbatches (config.grad_accum) equals one step on the whole batch."""

import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from memdyn import config as config_lib
from memdyn.data import build
from memdyn.model.transformer import REMAT_POLICIES
from memdyn.rundir import runs as runs_lib
from memdyn.train import optimizer
from memdyn.train import steps as core

STEPS = 4


def _train(workdir, steps=STEPS, **overrides):
    config = tiny_config(num_steps=steps, **{"model.size": "micro", **overrides})
    run = core.build_run(config, build.prepare(config, str(workdir)))
    params, opt_state = core.init_state(run)
    step_fn = core.make_train_step(run)
    metrics, after_first = [], None
    with run.context():
        for step in range(steps):
            params, opt_state, m = step_fn(params, opt_state, run.feeder.train_batch(step), np.int32(step))
            metrics.append(jax.device_get(m))
            after_first = jax.device_get(params) if step == 0 else after_first
    return run, after_first, jax.device_get(params), metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("reference"))


@pytest.mark.slow
@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_changes_nothing(tmp_path, reference, policy):
    """The first step is bitwise the same. Later steps differ in the last bit: XLA's CPU compiler fuses a
    rematerialised backward pass differently (measured: parameters within 1.4e-8 after 4 steps, except the
    attention's key bias, whose gradient is zero up to rounding since softmax ignores it, and which Adam's
    normalisation turns into steps of the learning rate's size: within 2.2e-6); the losses stayed bitwise equal."""
    _, ref_first, ref_params, ref_metrics = reference
    run, first, params, metrics = _train(tmp_path, **{"model.remat": policy})
    for a, b in zip(jax.tree.leaves(ref_first), jax.tree.leaves(first)):
        np.testing.assert_array_equal(a, b)  # bitwise, on the CPU
    assert metrics[0]["loss"] == ref_metrics[0]["loss"]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params)):
        key_bias = "key_bias" in jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 if key_bias else 1e-7, err_msg=jax.tree_util.keystr(path))
    for a, b in zip(ref_metrics, metrics):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["mem_update"] == b["mem_update"]
    # and it really rematerialises: the train step's jaxpr holds one checkpoint per block
    batch = run.feeder.train_batch(0)
    jaxpr = jax.make_jaxpr(core.make_forward(run))(params, batch, np.int32(0))
    assert str(jaxpr).count("checkpoint[") + str(jaxpr).count("remat") >= run.shape.num_layers


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="config.model.remat='everything': expected one of"):
        config_lib.validate(tiny_config(**{"model.remat": "everything"}))


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_k_microbatches_equal_one_batch(tmp_path, causal):
    """grad_accum=2 and 4 against 1 (micro, batch 8, 4 steps; a masked LM's masks are drawn for the whole batch
    either way): the losses, M_update, per-example records (in batch order) and parameters agree to float32
    rounding. Measured on this project's CPU: losses within 1.4e-6 (losses near 5.5), per-example losses within
    9.5e-7, M_update equal, gradient norms within 8.4e-8 relative, parameters within 1.2e-7 (the key bias, whose
    gradient is rounding noise that Adam normalises, within 2.4e-6). Tolerances: about 2-10x those."""
    extra = {"model.causal": causal}
    _, _, ref_params, ref_metrics = _train(tmp_path / "one", **extra)
    for k in (2, 4):
        _, _, params, metrics = _train(tmp_path / f"k{k}", **extra, grad_accum=k)
        for a, b in zip(ref_metrics, metrics):
            assert a["loss"] == pytest.approx(b["loss"], abs=5e-6)
            assert a["mem_update"] == pytest.approx(b["mem_update"], abs=1e-6)
            assert a["num_tokens"] == b["num_tokens"] and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
            np.testing.assert_array_equal(a["example_ids_B"], b["example_ids_B"])
            np.testing.assert_array_equal(a["num_tokens_B"], b["num_tokens_B"])
            np.testing.assert_allclose(a["exact_match_B"], b["exact_match_B"], atol=1e-6)
            np.testing.assert_allclose(a["loss_B"], b["loss_B"], atol=2e-6)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params)):
            key_bias = "key_bias" in jax.tree_util.keystr(path)
            np.testing.assert_allclose(
                a, b, rtol=0, atol=2e-5 if key_bias else 1e-6, err_msg=jax.tree_util.keystr(path)
            )


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ValueError, match="config.batch_size=8 is not divisible by config.grad_accum=3"):
        config_lib.validate(tiny_config(grad_accum=3))


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum", [1, 4])
def test_activation_estimate_is_near_what_xla_allocates(tmp_path, grad_accum):
    """`memdyn train --dry_run`'s activation estimate against the temporary memory XLA's compiled train step
    takes (tiny, batch 32 x 128 tokens). Measured on this project's CPU: 331 MiB estimated vs 295 MiB compiled
    with one batch, 83 vs 79 MiB with 4 microbatches; 9-12% above the compiled figure for twice the d_ff, heads,
    d_model or layers, and for SwiGLU. (Rematerialisation is not checked: XLA's CPU compiler undoes
    it: the compiled step took 8-10% more, not less, at tiny and small; its estimate is for accelerators.)"""
    from memdyn.train import summary

    config = tiny_config(
        **{
            "model.size": "tiny",
            "batch_size": 32,
            "data.seq_len": 128,
            "grad_accum": grad_accum,
            "data.synthetic.vocab_size": 2000,
            "data.synthetic.num_train_docs": 200,
        }
    )
    run = core.build_run(config, build.prepare(config, str(tmp_path)))
    with run.context():
        compiled = (
            core.make_train_step(run)
            .lower(run.abstract_params, run.abstract_opt_state, run.feeder.train_batch(0), np.int32(0))
            .compile()
        )
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert summary.activation_bytes(run) == pytest.approx(temp, rel=0.25), (summary.activation_bytes(run), temp)


def _model(scan: bool, num_layers: int = 3, **kw):
    from flax import nnx

    from memdyn.model import sizes
    from memdyn.model.transformer import Transformer

    shape = sizes.ModelShape(num_layers=num_layers, d_model=32, num_heads=4, d_ff=64, vocab_size=50, max_len=16)
    return Transformer(shape, causal=True, rngs=nnx.Rngs(params=0), scan_layers=scan, **kw)


@pytest.mark.slow
def test_scanned_layers_equal_unrolled_ones():
    """The unrolled model's parameters, stacked (model.stack_blocks), in the scanned model: the same logits,
    gradients (unstacked back), and KV-cache decoding."""
    from flax import nnx

    from memdyn.model.layout import stack_blocks, unstack_blocks

    unrolled, scanned = _model(False), _model(True)
    params = nnx.to_pure_dict(nnx.state(unrolled))
    nnx.update(scanned, stack_blocks(params))
    assert jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(scanned)))["blocks"]["mlp"]["in_kernel"] == (
        3,
        32,
        64,
    )
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 4, 50)
    valid = jax.numpy.arange(12)[None, :] < jax.numpy.array([[12], [9]])
    np.testing.assert_allclose(unrolled(tokens, valid_BxL=valid), scanned(tokens, valid_BxL=valid), atol=2e-6)
    grads = [nnx.to_pure_dict(nnx.grad(lambda m: m(tokens, valid_BxL=valid).sum())(m)) for m in (unrolled, scanned)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(unstack_blocks(grads[1]))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    decoded = []
    for m in (unrolled, scanned):
        logits, cache = m.prefill(tokens[:, :6], 10)
        steps = []
        for position in range(6, 9):
            step_logits, cache = m.decode_step(tokens[:, position], cache, position)
            steps.append(step_logits)
        decoded.append(np.stack(steps))
    np.testing.assert_allclose(decoded[0], decoded[1], atol=2e-6)


def _layer_slices(jaxpr, num_layers: int, in_loop: bool = False) -> list[bool]:
    """For every slice of a [num_layers, ...] array in ``jaxpr`` (nested ones included): whether it sits inside a
    loop (fori_loop with static bounds traces as a scan)."""
    found = []
    for eqn in jaxpr.eqns:
        operand = eqn.invars[0].aval if eqn.invars and hasattr(eqn.invars[0], "aval") else None
        if (
            eqn.primitive.name in ("slice", "dynamic_slice", "gather")
            and getattr(operand, "ndim", 0) >= 2
            and operand.shape[0] == num_layers
        ):
            found.append(in_loop)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    found += _layer_slices(
                        getattr(inner, "jaxpr", inner), num_layers, in_loop or eqn.primitive.name in ("while", "scan")
                    )
    return found


def test_scanned_greedy_decoding_slices_its_layers_once():
    """A scanned model's greedy decoding takes each layer's weights out of the stacked ones before the token loop,
    not once per token, and decodes the unrolled model's tokens."""
    from flax import nnx

    from memdyn.extraction import extractability
    from memdyn.model.layout import stack_blocks

    unrolled, scanned = _model(False), _model(True)
    nnx.update(scanned, stack_blocks(nnx.to_pure_dict(nnx.state(unrolled))))
    prompts = jax.random.randint(jax.random.key(2), (2, 6), 4, 50)  # batch 2: not the 3 layers
    decoded = [np.asarray(extractability.greedy_decode(*nnx.split(m), prompts, 5)) for m in (unrolled, scanned)]
    np.testing.assert_array_equal(decoded[0], decoded[1])
    graphdef, params = nnx.split(scanned)
    jaxpr = jax.make_jaxpr(lambda p: extractability._greedy_decode.__wrapped__(graphdef, p, prompts, 5, None))(params)
    in_loop = _layer_slices(jaxpr.jaxpr, num_layers=3)
    assert in_loop and not any(in_loop), f"{sum(in_loop)} of {len(in_loop)} layer slices inside the token loop"


def test_scanned_model_traces_once_whatever_its_depth():
    """What makes compile time independent of depth: the scanned model's program is the same size at 2 and 8
    layers, the unrolled one's grows with the layers."""
    tokens = np.zeros((2, 8), np.int32)
    size = {}
    for scan in (False, True):
        for layers in (2, 8):
            model = _model(scan, num_layers=layers)
            size[scan, layers] = str(jax.make_jaxpr(lambda t, m=model: m(t))(tokens)).count("dot_general")
    assert size[True, 2] == size[True, 8]  # one block's matmuls, once
    assert size[False, 8] - size[False, 2] == 6 * (size[True, 8] - 1)  # one block's matmuls per extra layer


@pytest.mark.slow
def test_scanned_and_unrolled_runs_train_alike_and_refuse_each_others_checkpoints(tmp_path):
    from memdyn.train import job

    base = {"model.size": "micro", "num_steps": 3, "eval.every": 0}
    for scan in (False, True):
        job.train(tiny_config(**base, **{"model.scan_layers": scan}), str(tmp_path / f"scan{scan}"))
    import pandas as pd

    losses = [pd.read_csv(tmp_path / f"scan{scan}" / "train.csv")["loss"] for scan in (False, True)]
    # different layouts draw different initial weights (vmap splits the rngs): alike, not equal
    assert abs(losses[0].iloc[0] - losses[1].iloc[0]) < 0.05
    with pytest.raises(ValueError, match="a scanned model's checkpoint holds its blocks stacked.*or fork it"):
        job.train(tiny_config(**{**base, "num_steps": 4}, **{"model.scan_layers": False}), str(tmp_path / "scanTrue"))


@pytest.mark.slow
@pytest.mark.parametrize("parent_scanned", [False, True])
def test_a_fork_continues_a_run_in_the_other_layout(tmp_path, parent_scanned):
    """`--init_from` with the other model.scan_layers converts the parent's parameters and Adam moments: the fork
    trains on as the parent itself does (float32 rounding: the two layouts' programs differ). Measured: losses
    within 9e-8 relative (unrolled to scanned) and equal (scanned to unrolled); a fork given a fresh Adam state
    instead, as a check of this test, was off by 1e-2."""
    import pandas as pd

    from memdyn.train import job

    parent, fork = str(tmp_path / "parent"), str(tmp_path / "fork")
    base = {"model.size": "micro", "eval.every": 0, "checkpoint.keep_steps": (4,)}
    job.train(tiny_config(**base, num_steps=8, **{"model.scan_layers": parent_scanned}), parent)
    job.train(
        tiny_config(**base, num_steps=8, init_from=f"{parent}@4", **{"model.scan_layers": not parent_scanned}), fork
    )
    a, b = (pd.read_csv(os.path.join(d, "train.csv")) for d in (parent, fork))
    assert b["step"].tolist() == [4, 5, 6, 7]
    np.testing.assert_allclose(b["loss"], a["loss"][a.step >= 4], rtol=2e-6)
    np.testing.assert_allclose(b["mem_update"], a["mem_update"][a.step >= 4], atol=1e-6)
    assert runs_lib.read_config(fork)["model"]["scan_layers"] == (not parent_scanned)


def test_scanned_model_refuses_gates_in_some_layers_only():
    with pytest.raises(ValueError, match="a scanned model runs the same block in every layer"):
        _model(True, gated_layers=(1,))


@pytest.mark.slow
def test_scanned_model_with_remat_and_microbatches_trains_like_without(tmp_path):
    _, _, plain, plain_metrics = _train(tmp_path / "plain", **{"model.scan_layers": True})
    _, _, both, metrics = _train(tmp_path / "both", grad_accum=2, **{"model.scan_layers": True, "model.remat": "block"})
    for a, b in zip(plain_metrics, metrics):
        assert a["loss"] == pytest.approx(b["loss"], abs=5e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(both)):
        key_bias = "key_bias" in jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 if key_bias else 1e-6, err_msg=jax.tree_util.keystr(path))


def test_weight_decay_masks_the_same_parameters_scanned_or_not():
    """Kernels and embeddings are decayed; biases (the [heads, head_dim] ones too) and layer norms never, whatever
    the layout (a scanned model's biases carry a layers axis)."""
    from flax import nnx

    masks = {}
    for scan in (False, True):
        state = nnx.to_pure_dict(nnx.state(_model(scan)))
        masks[scan] = jax.tree_util.tree_map_with_path(lambda path, p: optimizer.decays(path), state)
    assert masks[True]["blocks"] == masks[False]["block_00"] == masks[False]["block_02"]
    assert {k: v for k, v in masks[True].items() if k != "blocks"} == {
        k: v for k, v in masks[False].items() if not k.startswith("block_")
    }
    block = masks[False]["block_00"]
    assert block["attention"]["query_kernel"] and block["mlp"]["in_kernel"] and masks[False]["embed"]
    assert not block["attention"]["query_bias"] and not block["mlp_norm"]["scale"] and not block["mlp"]["in_bias"]


@pytest.mark.slow
def test_insertion_and_evaluation_with_microbatches(tmp_path):
    """A fork that inserts 3 special examples with grad_accum=2 (the inserted batch is rounded up to the 2
    microbatches), evaluating by microbatch-sized batches."""
    import pandas as pd

    from memdyn.train import job

    config = tiny_config(grad_accum=2, **{"insert.at_step": 2, "num_steps": 4})
    job.train(config, str(tmp_path))
    inserted = pd.read_csv(tmp_path / "insertions.csv")
    assert len(inserted) >= 1 and np.isfinite(inserted["loss"]).all()
    assert {"special", "validation"} <= set(pd.read_csv(tmp_path / "eval.csv")["set"])


@pytest.mark.parametrize(
    "extra",
    [
        {
            "data.source": "tfds",
            "data.tfds.name": "memdyn_synthetic",
            "data.vocab.model_type": "word",
            "data.vocab.size": None,
            "data.tags": "gold",
            "data.doc_ids": "prefix",
            "data.chunk_len": 29,
        },  # content, POS
        {"memsinks.method": "sinks", "memsinks.p_gen": 0.7, "memsinks.p_mem": 0.3},  # MemSinks' gated MLPs
        {"memsinks.method": "shared", "memsinks.p_gen": 0.7, "memsinks.p_mem": 0.3},  # and their gradient gates
    ],
    ids=["content+pos", "memsinks", "memsinks-shared"],
)
@pytest.mark.slow
def test_every_step_metric_combines_over_microbatches(tmp_path, extra):
    """Every metric the step returns, the content subset's, the per-tag counts and MemSinks runs' included,
    is the same with 2 microbatches as with one batch (float32 rounding; counts exactly)."""
    if extra.get("data.source") == "tfds":
        extra = {**extra, "data.tfds.data_dir": str(tmp_path / "tfds")}
    _, _, _, ref_metrics = _train(tmp_path / "one", steps=2, **extra)
    _, _, _, metrics = _train(tmp_path / "k2", steps=2, grad_accum=2, **extra)
    assert {k for k in ref_metrics[0] if k.endswith("_T")} and set(metrics[0]) == set(ref_metrics[0])
    if "data.doc_ids" in extra:
        assert "content_mem_update" in ref_metrics[0]
    for a, b in zip(ref_metrics, metrics):
        for key in a:
            if key.endswith(("_T", "num_tokens", "num_tokens_B", "ids_B")) or key == "loss_tokens":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=2e-6, err_msg=key)
