"""MemSinks: the published masks bit for bit, mask density, every eval mode's arithmetic, gradient masking,
exclusion, block-causal attention, sequence ids, and sharded equals unsharded."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import run_python, tiny_config
from memdyn.data import build
from memdyn.data.feeder import sequence_ids
from memdyn.model.layers import MLP
from memdyn.model.sizes import ModelShape
from memdyn.model.transformer import Transformer
from memdyn.studies.memsinks import masks as memsinks
from memdyn.train import steps

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures", "memsinks_masks.npz")
CASES = ("small_int64", "small_int32", "hash_int64", "hash_int32", "sparse_int64")


@pytest.mark.parametrize("case", CASES)
def test_paper_masks_equal_the_published_arithmetic_bit_for_bit(case):
    golden = np.load(GOLDEN)
    ids = golden[f"{case}__ids"]
    assert ids.dtype == (np.int32 if case.endswith("int32") else np.int64)
    mask = np.asarray(memsinks.paper_mask(ids, int(golden[f"{case}__neuron_dim"]), float(golden[f"{case}__p_active"])))
    np.testing.assert_array_equal(mask, golden[f"{case}__mask"])


def test_int32_ids_wrap_and_id_zero_opens_the_pool():
    golden = np.load(GOLDEN)
    ids32 = golden["hash_int32__ids"]
    # the same values as int64 give other masks: the int32 product s * 2**16 wraps
    as64 = np.asarray(memsinks.paper_mask(ids32.astype(np.int64), 1536, 0.3))
    assert (as64 != golden["hash_int32__mask"]).any()
    # int32 ids with id_width=64 are the int64 arithmetic of the same values (what training uses)
    np.testing.assert_array_equal(np.asarray(memsinks.paper_mask(ids32, 1536, 0.3, id_width=64)), as64)
    assert np.asarray(memsinks.paper_mask(np.zeros(3, np.int64), 50, 0.01)).all()


def test_paper_constants_wrap_as_int64():
    # a**j in int64 wraps from j = 3; the constants are the non-negative remainders of the wrapped powers
    c = memsinks.paper_constants(6)
    assert c[0] == 1 and c[1] == memsinks.PAPER_A and c[2] == memsinks.PAPER_A**2 % memsinks.PAPER_P
    wrapped = np.array([memsinks.PAPER_A], np.int64) ** 3  # numpy wraps silently
    assert c[3] == int(wrapped[0]) % memsinks.PAPER_P != memsinks.PAPER_A**3 % memsinks.PAPER_P


@pytest.mark.parametrize("kind", memsinks.MASK_KINDS)
@pytest.mark.parametrize("p", [0.3, 0.05])
def test_mask_density_is_p_mem(kind, p):
    ids = np.random.default_rng(0).integers(1, 2**31 - 1, 4000).astype(np.int32)
    mask = np.asarray(memsinks.pool_mask(ids, 256, p, kind))
    assert mask.shape == (4000, 256)
    assert abs(mask.mean() - p) < 0.005
    per_unit = mask.mean(axis=0)  # every unit, not just the pool on average
    assert np.abs(per_unit - p).max() < 6 * np.sqrt(p * (1 - p) / 4000)
    assert len({row.tobytes() for row in mask}) > 3990  # ids get different masks


@pytest.mark.parametrize("kind", memsinks.MASK_KINDS)
def test_gates_of_every_mode(kind):
    sinks = memsinks.Sinks(d_ff=40, p_gen=0.7, p_mem=0.3, mask=kind)
    assert (sinks.general, sinks.pool) == (28, 12)
    ids = np.array([[5, 5, 9], [123456789, 7, 0]], np.int32)
    pool = np.asarray(sinks.pool_mask(ids)).astype(np.float32)
    train = np.asarray(sinks.gate(jnp.asarray(ids), "train"))
    np.testing.assert_array_equal(train[..., :28], 1.0)
    np.testing.assert_array_equal(train[..., 28:], pool)
    all_ = np.asarray(sinks.gate(jnp.asarray(ids), "all"))
    np.testing.assert_array_equal(all_[..., :28], 1.0)
    np.testing.assert_allclose(all_[..., 28:], 0.3)
    dropout = np.asarray(sinks.gate(jnp.asarray(ids), "dropout"))
    np.testing.assert_allclose(dropout[..., :28], (0.7 + 0.3) / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dropout[..., 28:], 0.0)
    excluded = np.array([5, 7], np.int32)
    union = pool[0, 0].astype(bool) | pool[1, 1].astype(bool)  # id 5 at [0, 0], id 7 at [1, 1]
    exclude = np.asarray(sinks.gate(jnp.asarray(ids), "exclude", excluded))
    np.testing.assert_array_equal(exclude[..., :28], 1.0)
    np.testing.assert_allclose(exclude[..., 28:], np.broadcast_to(np.where(union, 0.0, 0.3), (2, 3, 12)))
    np.testing.assert_array_equal(np.asarray(sinks.excluded_units(excluded)), union)


def test_shared_sink_gates():
    sinks = memsinks.Sinks(d_ff=10, p_gen=0.6, p_mem=0.3, method="shared")
    ids = jnp.ones((2, 3), jnp.int32)
    assert sinks.gate(ids, "train") is None and sinks.gate(ids, "all") is None
    np.testing.assert_array_equal(np.asarray(sinks.gate(ids, "dropout"))[0, 0], [1] * 6 + [0] * 4)
    with pytest.raises(ValueError, match="sequence-tied"):
        sinks.gate(ids, "exclude", np.array([1], np.int32))


def _mlp(kind: str) -> MLP:
    return MLP(8, 10, kind, rngs=nnx.Rngs(params=0))


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_mlp_gate_multiplies_hidden_units_before_the_output(kind):
    mlp = _mlp(kind)
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    gate = np.random.default_rng(2).uniform(size=(2, 3, 10)).astype(np.float32)
    w_in = np.asarray(mlp.in_kernel[...])
    if kind == "swiglu":
        pre = x @ w_in
        h = pre / (1 + np.exp(-pre)) * (x @ np.asarray(mlp.up_kernel[...]))
        expected = (h * gate) @ np.asarray(mlp.out_kernel[...])
    else:
        pre = x @ w_in + np.asarray(mlp.in_bias[...])
        h = np.asarray(jax.nn.gelu(pre, approximate=False))
        expected = (h * gate) @ np.asarray(mlp.out_kernel[...]) + np.asarray(mlp.out_bias[...])
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x), jnp.asarray(gate))), expected, rtol=1e-5, atol=1e-6)


def test_gradient_gate_keeps_the_value_and_blocks_the_masked_units():
    mlp = _mlp("swiglu")
    graphdef, params = nnx.split(mlp)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 8)).astype(np.float32))
    allowed = jnp.broadcast_to(jnp.arange(10) < 6, (2, 3, 10)).astype(jnp.float32)

    def loss(p, grad_gate):
        return jnp.sum(nnx.merge(graphdef, p)(x, None, grad_gate) ** 2)

    np.testing.assert_allclose(loss(params, allowed), loss(params, None), rtol=1e-6)
    g = nnx.to_pure_dict(jax.grad(loss)(params, allowed))
    for name in ("in_kernel", "up_kernel"):
        assert (g[name][:, 6:] == 0).all() and (g[name][:, :6] != 0).all()
    assert (g["out_kernel"][6:] == 0).all() and (g["out_kernel"][:6] != 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_block_causal_attention_lets_no_token_see_another_document(causal):
    shape = ModelShape(num_layers=2, d_model=16, num_heads=2, d_ff=32, vocab_size=50, max_len=12)
    model = Transformer(shape, causal=causal, rngs=nnx.Rngs(params=0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 50, (2, 12)).astype(np.int32)
    segments = np.array([[1] * 5 + [2] * 7, [3] * 12], np.int32)  # row 0 packs two documents
    logits = np.asarray(model(jnp.asarray(tokens), segment_ids_BxL=jnp.asarray(segments)))
    for changed in (slice(0, 5), slice(5, 12)):  # change one document, the other's logits stay bitwise
        other = slice(5, 12) if changed.start == 0 else slice(0, 5)
        perturbed = tokens.copy()
        perturbed[0, changed] = rng.integers(4, 50, changed.stop - changed.start)
        got = np.asarray(model(jnp.asarray(perturbed), segment_ids_BxL=jnp.asarray(segments)))
        np.testing.assert_array_equal(got[0, other], logits[0, other])
        assert not np.allclose(got[0, changed], logits[0, changed])
    # a document alone in its row computes what it computes packed (same positions)
    alone = np.asarray(model(jnp.asarray(tokens[:1, :5])))
    np.testing.assert_allclose(logits[0, :5], alone[0], rtol=1e-5, atol=1e-5)
    # without segments the second document sees the first
    plain = np.asarray(model(jnp.asarray(tokens)))
    assert not np.allclose(plain[0, 5:], logits[0, 5:])


def test_sequence_ids_are_the_same_for_every_copy():
    rows = np.array([[7, 8, 9, 0, 0], [7, 8, 9, 0, 0], [7, 8, 9, 10, 0], [1, 2, 0, 0, 0]], np.int32)
    ids = sequence_ids(rows, pad_id=0)
    assert ids[0] == ids[1] and len(set(ids[1:].tolist())) == 3
    assert ids.dtype == np.int32 and (ids > 0).all()


def _data(tmp_path, **overrides):
    config = tiny_config(
        **{
            "data.tracked.duplicated_docs": 3,
            "data.tracked.duplicate_count": 6,
            "memsinks.method": "sinks",
            "model.mlp": "swiglu",
            **overrides,
        }
    )
    return config, build.prepare(config, str(tmp_path))


def _changed_units(before, after):
    """[F] bool: hidden units any of whose in/up/out weights changed in any layer."""
    changed = 0
    for block in before:
        if not block.startswith("block_"):
            continue
        b, a = before[block]["mlp"], after[block]["mlp"]
        for name in ("in_kernel", "up_kernel"):
            changed = changed | (np.asarray(b[name]) != np.asarray(a[name])).any(axis=0)
        changed = changed | (np.asarray(b["out_kernel"]) != np.asarray(a["out_kernel"])).any(axis=1)
    return changed


def test_shared_sink_gradient_masking_leaves_the_masked_region_bitwise_unchanged(tmp_path):
    config, data = _data(
        tmp_path, **{"memsinks.method": "shared", "optimizer.weight_decay": 0.0, "optimizer.warmup_steps": 0}
    )  # warm-up: the first update's lr is 0
    run = steps.build_run(config, data)
    sinks = memsinks.from_config(run.config)
    counts = np.asarray(data.train.dup_counts)
    general_rows, repeated_rows = np.flatnonzero(counts == 1)[:8], np.flatnonzero(counts > 1)[:8]
    assert len(repeated_rows) == 8
    step_fn = steps.make_train_step(run)
    for rows, frozen in ((general_rows, slice(sinks.general, None)), (repeated_rows, slice(0, sinks.general))):
        params, opt_state = steps.init_state(run)
        before = jax.tree.map(lambda a: np.array(a, copy=True), params)  # params are donated
        with run.context():
            params, opt_state, _ = step_fn(params, opt_state, run.feeder.batch(data.train, rows), np.int32(5))
        changed = _changed_units(before, jax.device_get(params))
        assert not changed[frozen].any()  # the masked region: bitwise unchanged
        untouched = np.ones(sinks.d_ff, bool)
        untouched[frozen] = False
        assert changed[untouched].all()  # the other region did learn


def test_memsinks_trains_only_the_units_of_the_batch_sequences(tmp_path):
    config, data = _data(tmp_path, **{"optimizer.weight_decay": 0.0, "optimizer.warmup_steps": 0})
    run = steps.build_run(config, data)
    sinks = memsinks.from_config(run.config)
    rows = np.arange(8)
    with run.context():
        batch = run.feeder.batch(data.train, rows)
        params, opt_state = steps.init_state(run)
        before = jax.tree.map(lambda a: np.array(a, copy=True), params)  # params are donated
        params, _, _ = steps.make_train_step(run)(params, opt_state, batch, np.int32(5))
    ids = sequence_ids(np.asarray(data.train.tokens)[rows], data.pad_id)
    active_pool = np.asarray(sinks.pool_mask(ids)).any(axis=0)
    changed = _changed_units(before, jax.device_get(params))
    np.testing.assert_array_equal(changed[sinks.general :], active_pool)  # exactly the batch's sink units
    assert changed[: sinks.general].all()
    assert not active_pool.all()  # a real test: some pool units were off for every sequence of the batch


def test_placebo_ids_change_every_update(tmp_path):
    a, b = np.asarray(memsinks.placebo_ids(3, 8)), np.asarray(memsinks.placebo_ids(4, 8))
    assert len(set(a.tolist()) | set(b.tolist())) == 16 and (a > 0).all()


@pytest.mark.slow
def test_eval_modes_in_training_and_at_a_checkpoint(tmp_path):
    from memdyn.extraction import eval_checkpoint
    from memdyn.train import job

    workdir = str(tmp_path / "run")
    config = tiny_config(
        **{
            "data.tracked.duplicated_docs": 3,
            "data.tracked.duplicate_count": 6,
            "memsinks.method": "sinks",
            "model.mlp": "swiglu",
            "eval.sets": ("validation", "duplicates"),
            "eval.memsinks_modes": ("dropout", "all"),
        }
    )
    job.train(config, workdir)
    import pandas as pd

    evals = pd.read_csv(os.path.join(workdir, "eval.csv"))
    last = evals[evals.step == evals.step.max()].set_index("set")
    for name in ("duplicates", "duplicates@dropout", "duplicates@all", "validation@dropout"):
        assert name in last.index
    # the checkpoint evaluation in each mode equals the training-time one
    for mode in ("dropout", "all"):
        got = eval_checkpoint.evaluate_checkpoint(workdir, "duplicates", memsinks_mode=mode)
        assert got["set"] == f"duplicates@{mode}"
        assert abs(got["loss"] - last.loss[f"duplicates@{mode}"]) < 1e-5
    assert abs(last.loss["duplicates@dropout"] - last.loss["duplicates"]) > 1e-6  # the modes differ
    # exclusion reports the pool fraction its ids cover, recomputed from their masks
    got = eval_checkpoint.evaluate_checkpoint(
        workdir, "duplicates", memsinks_mode="exclude", exclude_set="duplicates", exclude_count=2
    )
    run_data = build.prepare(config, workdir)
    ids = sequence_ids(np.asarray(run_data.sets["duplicates"].tokens), run_data.pad_id)[:2]
    sinks = memsinks.Sinks(d_ff=128, p_gen=0.7, p_mem=0.3)
    assert got["pool_fraction_excluded"] == pytest.approx(np.asarray(sinks.pool_mask(ids)).any(0).mean())
    frame = pd.read_csv(os.path.join(workdir, "evals", f"duplicates@exclude-{got['step']}.csv"))
    assert len(frame) == run_data.sets["duplicates"].num_examples
    # extraction under a mode: each row decodes with its own per-sequence gate
    got = eval_checkpoint.evaluate_checkpoint(
        workdir, "duplicates", extract_k=True, prompt_len=8, num_new=8, memsinks_mode="dropout"
    )
    assert os.path.isfile(os.path.join(workdir, "evals", f"duplicates@dropout-{got['step']}-extract.csv"))
    run = steps.build_run(config, run_data)
    with run.context():
        batch = run.feeder.batch(run_data.sets["duplicates"], np.arange(4))
        gates = np.asarray(steps.sequence_gates(run, batch, "train"))
    ids = np.asarray(batch["seq_ids_BxL"])[:, 0]
    np.testing.assert_array_equal(gates[:, sinks.general :], np.asarray(sinks.pool_mask(ids)).astype(np.float32))


def test_bad_memsinks_config_is_refused_by_name(tmp_path):
    from memdyn import config as config_lib

    for field, value, message in (
        ("memsinks.method", "sink", "config.memsinks.method"),
        ("memsinks.p_gen", 1.0, "config.memsinks.p_gen"),
        ("memsinks.mask", "hash", "config.memsinks.mask"),
        ("eval.memsinks_modes", ("drop",), "memsinks_modes"),
    ):
        c = tiny_config(**{"memsinks.method": "sinks", field: value})
        with pytest.raises(ValueError, match=message):
            config_lib.validate(c)
    with pytest.raises(ValueError, match="needs a MemSinks run"):
        config_lib.validate(tiny_config(**{"eval.memsinks_modes": ("dropout",)}))
    with pytest.raises(ValueError, match="memsinks.layers"):
        config_lib.resolve(tiny_config(**{"memsinks.method": "sinks", "memsinks.layers": (5,)}), vocab_size=256)


_SHARDED = r"""
import json, re, tempfile, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import tiny_config
from memdyn.train import steps
from memdyn.data import build

over = {"model.size": "tiny", "model.num_layers": 2, "batch_size": 8, "model.mlp": "swiglu",
        "memsinks.method": "sinks", "data.tracked.duplicated_docs": 3, "data.tracked.duplicate_count": 6}
data = build.prepare(tiny_config(**over), tempfile.mkdtemp())
out = {}
for mesh in [(1, 1, 1), (1, 1, 4), (2, 1, 4)]:
    c = tiny_config(**over)
    c.sharding.mesh = mesh
    devices = jax.devices()[:int(np.prod(mesh))]
    run = steps.build_run(c, data, devices)
    params, opt_state = steps.init_state(run)
    step_fn = steps.make_train_step(run)
    losses = []
    with run.context():
        for step in range(4):
            batch = run.feeder.train_batch(step)
            if step == 0:
                hlo = step_fn.lower(params, opt_state, batch, np.int32(0)).compile().as_text()
            params, opt_state, m = step_fn(params, opt_state, batch, np.int32(step))
            losses.append(float(m["loss"]))
    d_ff = run.shape.d_ff
    # per-device [B, 1, F] arrays of the mask computation (u32 words): the whole F on one device or a slice
    full = re.findall(rf"u32\[\d+,1,{d_ff}\]", hlo)
    sliced = re.findall(rf"u32\[\d+,1,{d_ff // mesh[2]}\]", hlo)
    out[str(mesh)] = {"losses": losses, "full_f_u32": len(full), "sliced_u32": len(sliced)}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_sink_masks_equal_one_device_and_stay_sliced():
    proc = run_python(_SHARDED, devices=8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    reference = result["(1, 1, 1)"]["losses"]
    assert reference[-1] < reference[0]
    for mesh in ("(1, 1, 4)", "(2, 1, 4)"):
        np.testing.assert_allclose(result[mesh]["losses"], reference, rtol=1e-5)
        assert result[mesh]["full_f_u32"] == 0  # no device computes the whole hidden axis of the mask
        assert result[mesh]["sliced_u32"] > 0  # each computes its own slice
    assert result["(1, 1, 1)"]["full_f_u32"] > 0  # the pattern does find the unsharded mask computation


def test_the_gate_acts_in_the_chosen_layers_only():
    shape = ModelShape(num_layers=2, d_model=16, num_heads=2, d_ff=32, vocab_size=50, max_len=8)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 50, (2, 8)).astype(np.int32))
    off = jnp.zeros((2, 8, 32))
    outputs = {}
    for layers in ((), (0,), (1,), (0, 1)):
        model = Transformer(shape, causal=True, rngs=nnx.Rngs(params=0), gated_layers=layers)
        outputs[layers] = np.asarray(model(tokens, mlp_gate_BxLxF=off))
    ungated = np.asarray(Transformer(shape, causal=True, rngs=nnx.Rngs(params=0))(tokens))
    np.testing.assert_array_equal(outputs[()], outputs[(0, 1)])  # empty: every layer
    for layers in ((0,), (1,), (0, 1)):
        assert not np.allclose(outputs[layers], ungated)
    assert not np.allclose(outputs[(0,)], outputs[(1,)]) and not np.allclose(outputs[(0,)], outputs[(0, 1)])
