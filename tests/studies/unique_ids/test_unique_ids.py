"""Unique identifiers like for like (configs/unique_ids.py): the three conditions cut documents at the same places,
a prefix run's `<set>@content` rows equal M over the content tokens recomputed in NumPy from its checkpoint and
count exactly the tokens the other conditions score, and `memdyn analyze unique_ids` is recomputed by hand."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from memdyn import config as config_lib
from memdyn.config import CONFIG_DIR, apply_overrides, load_config_file
from memdyn.data import build, run_data
from memdyn.data import vocab as vocab_lib
from memdyn.extraction import eval_checkpoint
from memdyn.extraction.extractability import _merge
from memdyn.rundir import runs
from memdyn.studies.unique_ids import analysis as unique_ids
from memdyn.train import job
from memdyn.train import steps as core

SEQ_LEN, PREFIX = 32, 3
SMALL = {
    "model.size": "nano",
    "data.synthetic.vocab_size": 256,
    "data.synthetic.num_train_docs": 30,
    "data.synthetic.num_validation_docs": 8,
    "data.seq_len": SEQ_LEN,
    "data.chunk_len": SEQ_LEN - PREFIX,
    "batch_size": 8,
    "num_steps": 6,
    "optimizer.warmup_steps": 1,
    "checkpoint.every": 0,
    "eval.every": 6,
    "eval.sets": ("train", "validation"),
}


def _config(condition: str, **overrides):
    c = load_config_file(os.path.join(CONFIG_DIR, "unique_ids.py"), "nano")
    return apply_overrides(c, {**SMALL, "data.doc_ids": condition, **overrides})


@pytest.fixture(scope="module")
def conditions(tmp_path_factory):
    """The three conditions trained 6 steps each on one TFDS build and one vocabulary."""
    root = tmp_path_factory.mktemp("unique_ids")
    shared = {"data.tfds.data_dir": str(root / "tfds")}
    out = {}
    for condition in ("none", "control", "prefix"):
        config = _config(condition, **shared)
        job.train(config, str(root / condition))
        out[condition] = str(root / condition)
        shared["data.vocab.path"] = str(root / "none" / "data" / "vocab.model")
    return out


def _data(workdir):
    return run_data.open_run_data(workdir, runs.load_config(workdir))


@pytest.mark.slow
def test_the_conditions_hold_the_same_content_at_the_same_places(conditions):
    data = {c: _data(w) for c, w in conditions.items()}
    none, control, prefix = (np.asarray(data[c].train.tokens) for c in ("none", "control", "prefix"))
    np.testing.assert_array_equal(none, control)  # the unused ids change nothing in the rows
    assert (none[:, SEQ_LEN - PREFIX :] == vocab_lib.PAD_ID).all()  # room left for the prefix
    np.testing.assert_array_equal(prefix[:, PREFIX:], none[:, : SEQ_LEN - PREFIX])  # the same content, shifted
    base = data["none"].vocab_size
    doc_ids = np.asarray(data["prefix"].train.doc_ids)
    np.testing.assert_array_equal(prefix[:, PREFIX - 1], base + doc_ids)  # <id>: a new id per document
    assert len(np.unique(prefix[:, : PREFIX - 1], axis=0)) == 1  # "document ID": the same tokens in every row
    np.testing.assert_array_equal(doc_ids, np.asarray(data["none"].train.doc_ids))
    assert data["control"].vocab_size == data["prefix"].vocab_size > base
    assert data["prefix"].train.manifest["id_prefix_len"] == PREFIX
    assert data["none"].train.manifest["id_prefix_len"] == 0


@pytest.mark.slow
def test_content_rows_equal_a_numpy_recomputation_and_count_the_same_tokens(conditions):
    workdir = conditions["prefix"]
    config = runs.load_config(workdir)
    data = run_data.open_run_data(workdir, config)
    run = core.build_run(config, data)
    assert run.content_start == PREFIX
    params = eval_checkpoint.restore(run, workdir, 6).params
    tokens = np.asarray(data.train.tokens)
    valid = tokens != data.pad_id
    logits = np.asarray(_merge(run.graphdef, params)(tokens[:, :-1], valid_BxL=valid[:, :-1]))
    correct = logits.argmax(-1) == tokens[:, 1:]
    scored = tokens[:, 1:] != data.pad_id
    content = scored.copy()
    content[:, :PREFIX] = False  # targets "ID", <id> and the first content token (predicted from the prefix)
    evals = pd.read_csv(os.path.join(workdir, "eval.csv"))
    last = evals[evals["step"] == 6].set_index("set")
    assert last.loc["train@content", "num_tokens"] == content.sum()
    assert last.loc["train@content", "exact_match"] == pytest.approx(correct[content].mean(), abs=1e-6)
    assert last.loc["train", "exact_match"] == pytest.approx(correct[scored].mean(), abs=1e-6)
    assert last.loc["train", "num_tokens"] == scored.sum()

    # The other conditions have no @content rows and score exactly the prefix run's content tokens.
    for condition in ("none", "control"):
        other = pd.read_csv(os.path.join(conditions[condition], "eval.csv"))
        assert not other["set"].str.contains("@").any()
        assert (other[other["set"] == "train"]["num_tokens"] == content.sum()).all()

    # A checkpoint evaluation writes the same numbers, per example too.
    aggregates = eval_checkpoint.evaluate_checkpoint(workdir, "train", 6)
    assert aggregates["content_exact_match"] == pytest.approx(last.loc["train@content", "exact_match"], abs=1e-7)
    per_example = pd.read_csv(os.path.join(workdir, "evals", "train@content-6.csv"))
    by_hand = (correct & content).sum(1) / np.maximum(content.sum(1), 1)
    np.testing.assert_allclose(per_example.sort_values("example_id")["exact_match"], by_hand, atol=1e-6)


def test_bad_chunk_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="chunk_len=40 must be between 2 and config.data.seq_len=32"):
        config_lib.validate(_config("none", **{"data.chunk_len": 40}))
    with pytest.raises(ValueError, match="chunk_len=31 and the 3-token document-ID prefix do not fit"):
        build.prepare(
            _config("prefix", **{"data.chunk_len": 31, "data.tfds.data_dir": str(tmp_path / "tfds")}),
            str(tmp_path / "b"),
        )
    store = apply_overrides(
        _config("none"),
        {"data.source": "store", "data.store": str(tmp_path), "data.doc_ids": "none", "data.tags": "none"},
    )
    with pytest.raises(ValueError, match="chunk_len=29 needs source 'synthetic', 'tfds' or 'text'"):
        config_lib.validate(store)


def _hand_run(root, condition, seed, m_content, m_all=None, lr=1e-3, name=None):
    """A run directory with train rows after epochs 0..len-1 (2 steps per epoch)."""
    workdir = os.path.join(root, name or f"{condition}-{seed}")
    os.makedirs(workdir)
    steps = 2 * (len(m_content) - 1)
    pd.DataFrame({"step": range(steps), "epochs_done": [(s + 1) / 2 for s in range(steps)]}).to_csv(
        os.path.join(workdir, "train.csv"), index=False
    )
    rows = [
        dict(
            step=2 * e,
            set="train",
            exact_match=(m_all or m_content)[e],
            num_tokens=120 if condition == "prefix" else 100,
        )
        for e in range(len(m_content))
    ]
    if condition == "prefix":
        rows += [dict(step=2 * e, set="train@content", exact_match=m, num_tokens=100) for e, m in enumerate(m_content)]
    pd.DataFrame(rows).to_csv(os.path.join(workdir, "eval.csv"), index=False)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(
            {
                "seed": seed,
                "num_steps": steps,
                "model": {"size": "nano", "causal": True},
                "optimizer": {"lr": lr},
                "data": {"doc_ids": condition, "seq_len": 64, "chunk_len": 61},
            },
            f,
        )
    return workdir


def test_analysis_recomputed_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(unique_ids, "AT_EPOCHS", (2,))
    curves = {
        ("none", 0): [0, 0.2, 0.4, 0.6],
        ("none", 1): [0, 0.3, 0.5, 0.7],
        ("control", 0): [0, 0.2, 0.5, 0.6],
        ("control", 1): [0, 0.3, 0.6, 0.8],
        ("prefix", 0): [0, 0.4, 0.7, 0.9],
        ("prefix", 1): [0, 0.5, 0.8, 0.9],
    }
    workdirs = [
        _hand_run(tmp_path, c, s, m, m_all=[x / 2 for x in m] if c == "prefix" else None)
        for (c, s), m in curves.items()
    ]
    result = unique_ids.analyze_runs(workdirs, str(tmp_path / "out"), taus=(0.5, 0.85))
    conditions = result["conditions"].set_index("condition")
    assert list(conditions.index) == ["none", "control", "prefix"]
    assert conditions.loc["prefix", "final_m_content_mean"] == pytest.approx(0.9)
    assert conditions.loc["prefix", "final_m_all_mean"] == pytest.approx(0.45)  # the train rows, prefix included
    assert conditions.loc["none", "T_0.5_mean"] == pytest.approx(2.5)  # epochs 3 and 2
    assert conditions.loc["prefix", "T_0.5_mean"] == pytest.approx(1.5)  # epochs 2 and 1
    assert math.isnan(conditions.loc["none", "T_0.85_mean"]) and conditions.loc["prefix", "T_0.85_mean"] == 3
    diffs = result["differences"].set_index(["a", "b", "quantity"])
    row = diffs.loc[("prefix", "control", "m_content_at_2")]  # seed 0: 0.7 - 0.5, seed 1: 0.8 - 0.6
    assert row["mean"] == pytest.approx(0.2) and row["ci_low"] == pytest.approx(0.2)
    row = diffs.loc[("control", "none", "final_m_content")]  # 0.0 and 0.1: mean 0.05, t(1) half-width 12.706*0.05
    assert row["mean"] == pytest.approx(0.05)
    assert row["ci_high"] - row["mean"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    row = diffs.loc[("prefix", "none", "T_0.85")]  # no seed of `none` reached 0.85: no mean over the others
    assert row["n"] == 0 and math.isnan(row["mean"])
    assert "reached by 0/2 pairs" in open(tmp_path / "out" / "unique_ids_differences.md").read()
    assert os.path.getsize(tmp_path / "out" / "unique_ids.png") > 10_000

    # Runs that are not like for like are refused, by what differs
    other = _hand_run(tmp_path, "control", 2, [0, 0.1, 0.2, 0.3], lr=3e-3)
    with pytest.raises(ValueError, match="the runs differ in peak_lr"):
        unique_ids.analyze_runs(workdirs + [other], str(tmp_path / "out"))
    twice = _hand_run(tmp_path, "none", 0, [0, 0.1, 0.2, 0.3], name="none-0-again")
    with pytest.raises(ValueError, match="several runs of one"):
        unique_ids.analyze_runs(workdirs + [twice], str(tmp_path / "out"))
    # the same sweep given twice counts each run once
    again = unique_ids.analyze_runs(workdirs + workdirs, str(tmp_path / "out2"), taus=(0.5,))
    assert (again["conditions"]["n_seeds"] == 2).all()
