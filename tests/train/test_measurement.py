"""What memdyn's reported numbers mean, recomputed independently from checkpoints and raw records:
M(f) after k epochs, the "right before" evaluation of an insertion, the masked-LM scored positions and the
sham-insertion control of forgetting."""

import os

import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from conftest import run_memdyn, tiny_config
from memdyn.data import build, run_data, vocab
from memdyn.data.order import PADDING_ROW
from memdyn.extraction import eval_checkpoint
from memdyn.rundir import runs
from memdyn.studies.forgetting import analysis as forgetting
from memdyn.studies.memorization import analysis as memorization
from memdyn.train import checkpoint, evaluate, job, objective, steps, writers


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """A run of 3 epochs that evaluates the training set after every epoch and keeps every epoch's checkpoint."""
    workdir = str(tmp_path_factory.mktemp("epochs"))
    data = build.prepare(tiny_config(), workdir)
    spe = -(-data.train.num_examples // 8)
    config = tiny_config(num_steps=3 * spe, **{"eval.every": 0, "checkpoint.keep_steps": (spe, 2 * spe)})
    job.train(config, workdir)
    return workdir, spe


@pytest.mark.slow
def test_m_after_k_epochs_is_the_checkpoint_evaluation_after_k_epochs(three_epochs):
    workdir, spe = three_epochs
    frame = memorization.epoch_memorization(workdir)
    assert (frame["m_from"] == "train_eval").all() and frame["epoch"].tolist() == [0, 1, 2, 3]
    for k in (1, 2, 3):
        at_checkpoint = eval_checkpoint.evaluate_checkpoint(workdir, "train", k * spe)
        assert at_checkpoint["step"] == k * spe
        assert frame.loc[frame["epoch"] == k, "exact_match"].item() == pytest.approx(
            at_checkpoint["exact_match"], abs=1e-12
        )
    summary = memorization.analyze_runs([workdir])
    assert summary["final_epoch"].item() == 3 and summary["final_m"].item() == pytest.approx(
        frame["exact_match"].iloc[-1]
    )


@pytest.mark.slow
def test_in_step_estimate_of_epoch_k_is_scored_on_the_model_after_k_epochs(three_epochs):
    """The first batch of epoch k is scored by the model right after k epochs: its in-step records equal the
    checkpoint evaluation of those examples, so the in-step estimate labelled k starts at the right model."""
    workdir, spe = three_epochs
    records = writers.read_examples(os.path.join(workdir, "examples"))
    in_step = memorization.epoch_memorization(workdir, m_from="in_step")
    assert in_step["epoch"].tolist() == [0, 1, 2] and in_step["complete"].all()
    for k in (1, 2):
        eval_checkpoint.evaluate_checkpoint(workdir, "train", k * spe)
        per_example = pd.read_csv(os.path.join(workdir, "evals", f"train-{k * spe}.csv")).set_index("example_id")
        first = records[records["step"] == k * spe].set_index("example_id")
        np.testing.assert_allclose(first["exact_match"], per_example.loc[first.index, "exact_match"], atol=1e-6)
        window = records[(records["step"] >= k * spe) & (records["step"] < (k + 1) * spe)]
        expected = (window["exact_match"] * window["num_tokens"]).sum() / window["num_tokens"].sum()
        assert in_step.loc[in_step["epoch"] == k, "exact_match"].item() == pytest.approx(expected)


@pytest.mark.slow
def test_insertion_in_an_unforked_run_is_evaluated_right_before(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config(num_steps=9, **{"insert.at_step": 5, "eval.every": 4, "checkpoint.keep_steps": (5,)})
    job.train(config, workdir)
    evals = pd.read_csv(os.path.join(workdir, "eval.csv"))
    at_5 = evals[(evals["set"] == "special") & (evals["step"] == 5)]
    assert at_5["at_insertion"].tolist() == ["before", "after"]
    before = at_5.iloc[0]
    assert before["inserted_updates"] == 0 and at_5.iloc[1]["inserted_updates"] > 0
    checkpoint_m = eval_checkpoint.evaluate_checkpoint(workdir, "special", 5)["exact_match"]
    assert before["exact_match"] == pytest.approx(checkpoint_m, abs=1e-12)
    _, summary = forgetting.analyze_runs([workdir])
    assert summary["m_before"].item() == pytest.approx(checkpoint_m, abs=1e-12)
    assert summary["m_before"].item() > 0  # not the untrained model's step-0 value


def _mask_positions_accuracy(workdir, set_name, step):
    """Exact match per example at the <mask> positions, recomputed with the model and the objective's masks."""
    config = runs.load_config(workdir)
    data = run_data.open_run_data(workdir, config)
    run = steps.build_run(config, data)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    with run.context():
        params = ckpt.restore(step, run.abstract_params, run.abstract_opt_state).params
    ckpt.close()
    store = data.sets[set_name]
    model = nnx.merge(run.graphdef, nnx.State(jax.device_get(params)))
    masking = objective.MaskingConfig(scored="selected", mask_prob=config.model.mask_prob)
    out = {}
    for i, rows in enumerate(run.feeder.set_rows(store, config.batch_size)):
        real = rows[rows != PADDING_ROW]
        tokens = store.rows(real)["tokens"]
        padded = np.full((len(rows), tokens.shape[1]), vocab.PAD_ID, np.int32)
        padded[: len(real)] = tokens
        key = jax.random.fold_in(jax.random.key(config.seed), evaluate.EVAL_MASK_SALT + i)
        t = objective.masked_lm(padded, key, run.shape.vocab_size, masking)
        inputs = np.asarray(t.inputs_BxL)
        logits = np.asarray(model(inputs, valid_BxL=inputs != vocab.PAD_ID))
        at_mask = inputs == vocab.MASK_ID
        correct = (logits.argmax(-1) == padded) & at_mask
        for j, example_id in enumerate(store.rows(real)["example_ids"]):
            out[int(example_id)] = (correct[j].sum(), at_mask[j].sum())
    return out


@pytest.mark.slow
def test_masked_lm_memorization_counts_mask_positions_only(tmp_path):
    workdir = str(tmp_path)
    job.train(tiny_config(num_steps=8, **{"model.causal": False, "checkpoint.keep_steps": (8,)}), workdir)
    eval_checkpoint.evaluate_checkpoint(workdir, "validation", 8)
    reported = pd.read_csv(os.path.join(workdir, "evals", "validation-8.csv")).set_index("example_id")
    expected = _mask_positions_accuracy(workdir, "validation", 8)
    ids = sorted(expected)
    np.testing.assert_array_equal(reported.loc[ids, "num_tokens"], [expected[i][1] for i in ids])
    np.testing.assert_allclose(
        reported.loc[ids, "exact_match"], [expected[i][0] / max(expected[i][1], 1) for i in ids], atol=1e-6
    )
    # The choice is a documented option: scoring every selected position counts more positions.
    other = str(tmp_path / "selected")
    job.train(tiny_config(num_steps=8, **{"model.causal": False, "model.mlm_scored": "selected"}), other)
    a = pd.read_csv(os.path.join(workdir, "eval.csv"))
    b = pd.read_csv(os.path.join(other, "eval.csv"))
    assert (b["num_tokens"].to_numpy() > a["num_tokens"].to_numpy()).all()


@pytest.mark.slow
def test_sham_fork_is_the_insertion_fork_without_its_updates(tmp_path):
    parent, plain = str(tmp_path / "parent"), str(tmp_path / "plain")
    insert, sham = str(tmp_path / "insert"), str(tmp_path / "sham")
    job.train(tiny_config(num_steps=5, **{"checkpoint.keep_steps": (5,)}), parent)
    fork = dict(num_steps=13, init_from=f"{parent}@5", **{"insert.at_step": 5})
    job.train(tiny_config(**fork), insert)
    job.train(tiny_config(**fork, **{"insert.sham": True}), sham)
    job.train(tiny_config(num_steps=13, init_from=f"{parent}@5"), plain)
    assert pd.read_csv(os.path.join(sham, "insertions.csv")).empty  # no inserted update
    volatile = ["steps_per_sec", "run"]
    a = pd.read_csv(os.path.join(sham, "train.csv")).drop(columns=volatile)
    b = pd.read_csv(os.path.join(plain, "train.csv")).drop(columns=volatile)
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # the sham trains exactly what no insertion trains
    e_insert, e_sham = (pd.read_csv(os.path.join(w, "eval.csv")) for w in (insert, sham))
    key = ["set", "step", "at_insertion"]
    assert e_insert[key].fillna("").values.tolist() == e_sham[key].fillna("").values.tolist()  # same evaluations
    _, summary = forgetting.analyze_runs([insert, sham])
    row = summary[~summary["sham"]].iloc[0]
    assert row["control_run"] == sham
    special = e_insert[e_insert["set"] == "special"].reset_index(drop=True)
    control = e_sham[e_sham["set"] == "special"].reset_index(drop=True)
    after = special["at_insertion"] == "after"
    assert row["jump"] == pytest.approx((special["exact_match"] - control["exact_match"])[after].item())
    assert (
        special.loc[special["at_insertion"] == "before", "exact_match"].item()
        == control.loc[control["at_insertion"] == "before", "exact_match"].item()
    )  # one checkpoint, one model
    # From the command line on the whole directory: the parent and the plain fork insert nothing and are skipped.
    proc = run_memdyn("analyze", "forgetting", f"--sweep={tmp_path}", f"--out={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "forgetting_conditions.csv")
    assert table["n_seeds"].item() == 1 and table["jump_mean"].item() == pytest.approx(row["jump"])
