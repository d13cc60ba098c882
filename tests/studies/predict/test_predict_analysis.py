"""`memdyn analyze predict` recomputed by hand from made-up extraction files: precision, recall, compute, families,
the bootstrap's coverage of the per-seed values, score distributions and the duplicate breakdown."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from memdyn.data.store import write_store
from memdyn.studies.predict import analysis as analysis

N = 200  # training sequences
SIZES = {"small": 1000, "big": 4000}  # parameters
STEPS = (10, 20, 40)
TOKENS_PER_STEP = 100


def _write_run(root, size, seed, memorized_by_step, occurrences):
    workdir = root / f"model.size={size},seed={seed}"
    (workdir / "extract").mkdir(parents=True)
    config = {
        "seed": seed,
        "model": {"size": size, "params": SIZES[size], "causal": True},
        "optimizer": {"lr": 1e-3},
        "batch_size": 4,
        "data": {"seq_len": 64},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    steps = np.arange(max(STEPS))
    pd.DataFrame({"step": steps, "tokens_seen": (steps + 1) * TOKENS_PER_STEP}).to_csv(
        workdir / "train.csv", index=False
    )
    for step, memorized in memorized_by_step.items():
        score = np.where(memorized, 1.0, (np.arange(N) % 32) / 32)
        path = workdir / "extract" / f"train-{step}.csv"
        pd.DataFrame(
            {
                "example_id": np.arange(N) * 3,
                "score": score,
                "memorized": memorized,
                "prefix_match": np.where(memorized, 32, 0),
                "loss": 1.0,
            }
        ).to_csv(path, index=False)
        (workdir / "extract" / f"train-{step}.csv.json").write_text(
            json.dumps({"prompt_len": 32, "num_new": 32, "score": True})
        )
    write_store(
        str(workdir / "data" / "train"),
        tokens=np.ones((N, 4)),
        example_ids=np.arange(N) * 3,
        doc_ids=np.arange(N),
        dup_counts=occurrences,
    )
    return str(workdir)


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(1)
    occurrences = np.where(np.arange(N) < 40, 8, 1)
    truth, workdirs = {}, []
    for seed in (0, 1, 2):
        # the big model memorizes the duplicated sequences and some others; the small one a subset of those
        big = {s: (occurrences == 8) & (rng.random(N) < s / 40) | (rng.random(N) < 0.05 * s / 40) for s in STEPS}
        small = {s: big[40] & (rng.random(N) < 0.3 * s / 40) | (rng.random(N) < 0.01) for s in STEPS}
        truth[seed] = (big, small)
        workdirs.append(_write_run(tmp_path, "big", seed, big, occurrences))
        workdirs.append(_write_run(tmp_path, "small", seed, small, occurrences))
    return tmp_path, workdirs, truth, occurrences


def test_precision_recall_compute_and_families_by_hand(sweep):
    root, workdirs, truth, _ = sweep
    result = analysis.analyze_runs(workdirs, str(root / "out"), replicates=500)
    pairs = result["pairs"]
    assert len(pairs) == 3 * (2 + 3)  # per seed: 2 earlier checkpoints of the target, 3 of the small model
    for seed, (big, small) in truth.items():
        target = big[40]
        for size, memorized in (("big", big), ("small", small)):
            for step in STEPS:
                if size == "big" and step == 40:
                    continue
                row = pairs[(pairs.seed == seed) & (pairs["size"] == size) & (pairs.step == step)].iloc[0]
                pred = memorized[step]
                assert row["precision"] == pytest.approx((pred & target).sum() / pred.sum())
                assert row["recall"] == pytest.approx((pred & target).sum() / target.sum())
                assert row["compute"] == 6 * SIZES[size] * step * TOKENS_PER_STEP
                assert row["compute_fraction"] == pytest.approx(SIZES[size] * step / (SIZES["big"] * 40))
                family = (
                    "target checkpoint"
                    if size == "big"
                    else "smaller, final"
                    if step == 40
                    else "smaller, intermediate"
                )
                assert row["family"] == family
    predictors = result["predictors"]
    for _, row in predictors.iterrows():
        part = pairs[(pairs["size"] == row["size"]) & (pairs.step == row["step"])]
        for metric in ("precision", "recall"):
            assert row[f"{metric}_mean"] == pytest.approx(part[metric].mean())
            # the interval covers the mean and lies within the per-seed spread widened by sequence noise
            assert row[f"{metric}_ci_low"] <= row[f"{metric}_mean"] <= row[f"{metric}_ci_high"]
            assert row[f"{metric}_ci_high"] - row[f"{metric}_ci_low"] > 0
    # more compute along the target's checkpoints: recall rises (the synthetic sets are built to)
    checkpoints = predictors[predictors.family == "target checkpoint"].sort_values("step")
    assert checkpoints["recall_mean"].is_monotonic_increasing
    for name in ("models", "pairs", "predictors", "equicompute", "memorized", "scores", "duplicates"):
        assert (root / "out" / f"predict_{name}.csv").stat().st_size > 0
    assert (root / "out" / "predict.png").stat().st_size > 0
    tables = (root / "out" / "predict_tables.md").read_text()
    assert "### Smaller models, fully trained" in tables and "### Intermediate checkpoints of the target" in tables


def test_equicompute_takes_the_best_recall_within_the_budget(sweep):
    root, workdirs, _, _ = sweep
    result = analysis.analyze_runs(workdirs, str(root / "out"), replicates=50)
    predictors, eq = result["predictors"], result["equicompute"]
    for _, row in eq.iterrows():
        within = predictors[
            (predictors.family == "target checkpoint") & (predictors.compute_fraction_mean <= row["compute_fraction"])
        ]
        if within.empty:
            assert not isinstance(row.get("target_checkpoint"), str)
            continue
        best = within.loc[within["recall_mean"].idxmax()]
        assert row["target_checkpoint"] == f"big@{int(best['step'])}"
        assert row["target_checkpoint_recall"] == pytest.approx(best["recall_mean"])


def test_memorized_fractions_scores_and_duplicates(sweep):
    root, workdirs, truth, occurrences = sweep
    result = analysis.analyze_runs(workdirs, str(root / "out"), replicates=50)
    memorized = result["memorized"]
    row = memorized[(memorized["size"] == "big") & (memorized.step == 20)].iloc[0]
    assert row["memorized_fraction_mean"] == pytest.approx(np.mean([b[20].mean() for b, _ in truth.values()]))
    scores = result["scores"]
    big = scores[scores["size"] == "big"]
    at_one = big[big.score == 1.0]["fraction_mean"].item()
    assert at_one == pytest.approx(np.mean([b[40].mean() for b, _ in truth.values()]))
    assert big["fraction_mean"].sum() == pytest.approx(1.0)
    duplicates = result["duplicates"]
    row = duplicates[(duplicates["size"] == "big") & (duplicates.occurrences == 8)].iloc[0]
    assert row["memorized_fraction_mean"] == pytest.approx(
        np.mean([b[40][occurrences == 8].mean() for b, _ in truth.values()])
    )
    assert row["n_sequences_mean"] == 40


def test_bootstrap_is_reproducible(sweep):
    root, workdirs, _, _ = sweep
    first = analysis.analyze_runs(workdirs, str(root / "a"), replicates=300)["predictors"]
    again = analysis.analyze_runs(workdirs, str(root / "b"), replicates=300)["predictors"]
    pd.testing.assert_frame_equal(first, again)  # a fixed bootstrap seed: the same numbers every time


def test_clear_errors(tmp_path, sweep):
    with pytest.raises(ValueError, match="no run has k-extractability"):
        analysis.load_models([])
    root, workdirs, _, _ = sweep
    # a predictor scored on other sequences than the target
    path = os.path.join(workdirs[1], "extract", "train-10.csv")
    frame = pd.read_csv(path)
    frame.iloc[:-1].to_csv(path, index=False)
    with pytest.raises(ValueError, match="scored other sequences than the target"):
        analysis.analyze_runs(workdirs, str(root / "out"), replicates=10)
