"""`memdyn analyze pos` recomputed by hand from made-up pos.csv files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from memdyn.studies.pos import analysis as analysis

STEPS_PER_EPOCH = 10


def _write_run(root, size, seed, rows, with_train_eval=True):
    workdir = root / f"model.size={size},seed={seed}"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(
        json.dumps({"seed": seed, "model": {"size": size, "params": {"big": 1000, "small": 10}[size]}})
    )
    steps = np.arange(3 * STEPS_PER_EPOCH)
    pd.DataFrame({"step": steps, "epochs_done": (steps + 1) / STEPS_PER_EPOCH}).to_csv(
        workdir / "train.csv", index=False
    )
    frame = pd.DataFrame(rows)
    if not with_train_eval:
        frame = frame[frame["set"] != "train"]
    frame.to_csv(workdir / "pos.csv", index=False)
    return str(workdir)


def _rows(seed):
    rows = []
    for epoch in (0, 1, 2, 3):  # whole-training-set evaluations after each epoch
        for tag, positions in (("NOUN", 100), ("VERB", 50), ("NONE", 20)):
            right, exact = (epoch * 20 + seed) % positions, (epoch * 10 + seed) % positions
            rows.append(
                dict(step=epoch * STEPS_PER_EPOCH, set="train", tag=tag, positions=positions, right=right, exact=exact)
            )
    for step in range(3 * STEPS_PER_EPOCH):  # per-update rows
        rows.append(dict(step=step, set="update", tag="NOUN", positions=4, right=step % 4, exact=(step + seed) % 2))
    return rows


def test_curves_final_table_and_intervals(tmp_path):
    workdirs = [_write_run(tmp_path, "big", seed, _rows(seed)) for seed in (0, 1, 2)]
    result = analysis.analyze_runs(workdirs, str(tmp_path / "out"))
    curves = result["curves"]
    assert set(curves["tag"]) == {"NOUN", "VERB"}  # NONE left out
    row = curves[(curves["run"] == "model.size=big,seed=1") & (curves["tag"] == "NOUN") & (curves["epoch"] == 2)]
    assert row["R"].item() == pytest.approx((2 * 20 + 1) / 100) and row["R_mem"].item() == pytest.approx(21 / 100)
    final = result["final"]
    noun = final[final["tag"] == "NOUN"].iloc[0]
    values = [(3 * 10 + s) / 100 for s in (0, 1, 2)]
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert noun["R_mem_mean"] == pytest.approx(np.mean(values)) and noun["R_mem_ci_high"] == pytest.approx(
        np.mean(values) + half
    )
    assert list(final["tag"]) == ["VERB", "NOUN"]  # ranked by R_mem at the last epoch
    for name in ("pos_curves.csv", "pos_by_size.csv", "pos_final.csv", "pos_final.md", "pos.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_without_training_set_evaluations_the_updates_are_summed_per_epoch(tmp_path):
    workdir = _write_run(tmp_path, "small", 0, _rows(0), with_train_eval=False)
    curves = analysis.load_curves([workdir])
    assert set(curves["source"]) == {"in_step"} and sorted(curves["epoch"].unique()) == [1, 2, 3]
    first = curves[curves["epoch"] == 1].iloc[0]
    steps = np.arange(STEPS_PER_EPOCH)
    assert first["positions"] == 4 * STEPS_PER_EPOCH
    assert first["R"] == pytest.approx((steps % 4).sum() / (4 * STEPS_PER_EPOCH))


def test_no_pos_csv_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run has a pos.csv"):
        analysis.load_curves([str(tmp_path)])
