"""`memdyn analyze memsinks` recomputed by hand from the raw eval.csv rows of made-up runs."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from memdyn.studies.memsinks import analysis as analysis

SETS = ("validation", "duplicates", "control")


def _write_run(path, seed, condition, losses):
    """losses: {set label (e.g. 'duplicates@dropout'): [loss at step 0, loss at step 10]}."""
    os.makedirs(path)
    config = {
        "seed": seed,
        "memsinks": {"method": "none", "ids": "sequence"},
        "data": {"tracked": {"duplicate_count": 128}},
    }
    if condition in ("memsinks", "placebo"):
        config["memsinks"] = {"method": "sinks", "ids": "placebo" if condition == "placebo" else "sequence"}
    if condition == "dedup":
        config["data"]["tracked"]["duplicate_count"] = 1
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    rows = [
        dict(
            step=step,
            update=step,
            inserted_updates=0,
            set=label,
            at_insertion="",
            exact_match=0.0,
            loss=v,
            perplexity=np.exp(v),
            num_examples=3,
            num_tokens=30,
        )
        for label, values in losses.items()
        for step, v in zip((0, 10), values)
    ]
    pd.DataFrame(rows).to_csv(os.path.join(path, "eval.csv"), index=False)


def test_gap_closed_and_validation_delta_are_paired_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    raw = {}
    for seed in (0, 1, 2):
        std = {"validation": 3.0 + 0.1 * seed, "duplicates": 0.2 + 0.05 * seed, "control": 4.0 + 0.1 * seed}
        ms = {name: value + rng.uniform(0, 0.1) for name, value in std.items()}
        dropped = {
            "validation": ms["validation"] + 0.05,
            "duplicates": 2.5 + 0.3 * seed,
            "control": ms["control"] + 0.02,
        }
        raw[seed] = (std, ms, dropped)
        _write_run(tmp_path / f"standard/seed={seed}", seed, "standard", {k: [7.0, v] for k, v in std.items()})
        losses = {k: [7.0, v] for k, v in ms.items()}
        losses.update({f"{k}@dropout": [7.0, v] for k, v in dropped.items()})
        _write_run(tmp_path / f"memsinks/seed={seed}", seed, "memsinks", losses)
    _write_run(tmp_path / "dedup/seed=0", 0, "dedup", {k: [7.0, 3.0] for k in SETS})
    workdirs = sorted(str(p.parent) for p in tmp_path.glob("*/*/config.json"))
    summary, table = analysis.analyze_runs(workdirs, out_dir=str(tmp_path / "out"))

    gaps = [(d["duplicates"] - s["duplicates"]) / (s["control"] - s["duplicates"]) for s, _, d in raw.values()]
    deltas = [d["validation"] - s["validation"] for s, _, d in raw.values()]
    row = table[(table.condition == "memsinks") & (table.variant == "dropped")].iloc[0]
    assert row["gap_closed_mean"] == pytest.approx(np.mean(gaps))
    half = stats.t.ppf(0.975, 2) * np.std(gaps, ddof=1) / np.sqrt(3)
    assert row["gap_closed_ci_high"] == pytest.approx(np.mean(gaps) + half)
    assert row["val_delta_mean"] == pytest.approx(np.mean(deltas))
    kept = table[(table.condition == "memsinks") & (table.variant == "kept")].iloc[0]
    assert kept["repeated_mean"] == pytest.approx(np.mean([m["duplicates"] for _, m, _ in raw.values()]))
    standard = table[table.condition == "standard"].iloc[0]
    assert standard["gap_closed_mean"] == 0 and standard["n_seeds"] == 3
    assert set(table.condition) == {"standard", "memsinks", "dedup"}
    # paired by seed: MemSinks dropped against standard, on validation loss
    comparisons = pd.read_csv(tmp_path / "out" / "memsinks_comparisons.csv")
    row = comparisons[(comparisons.b == "standard:kept") & (comparisons.metric == "validation")].iloc[0]
    assert row["difference_mean"] == pytest.approx(np.mean(deltas)) and row["n_seeds"] == 3
    for name in (
        "memsinks_curves.csv",
        "memsinks_summary.csv",
        "memsinks_conditions.csv",
        "memsinks_conditions.md",
        "memsinks.png",
    ):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    curves = pd.read_csv(tmp_path / "out" / "memsinks_curves.csv")
    assert len(curves) == 3 * 2 + 3 * 2 * 2 + 2  # (run, variant, step) rows


def test_conditions_from_configs():
    base = {"memsinks": {"method": "none"}, "data": {"tracked": {"duplicate_count": 128}}}
    assert analysis.condition(base) == "standard"
    assert analysis.condition({**base, "data": {"tracked": {"duplicate_count": 1}}}) == "dedup"
    assert analysis.condition({**base, "memsinks": {"method": "shared"}}) == "shared"
    assert analysis.condition({**base, "memsinks": {"method": "sinks", "ids": "placebo"}}) == "placebo"
    assert analysis.condition({**base, "memsinks": {"method": "sinks", "ids": "sequence"}}) == "memsinks"


def test_runs_of_another_experiment_are_refused(tmp_path):
    _write_run(tmp_path / "r", 0, "standard", {"validation": [7.0, 3.0]})
    with pytest.raises(ValueError, match="configs/memsinks.py"):
        analysis.analyze_runs([str(tmp_path / "r")])


def test_the_command_lists_only_the_files_it_wrote(tmp_path, capsys):
    """Without deletion files `memdyn analyze memsinks` writes no memsinks_deletion.csv, and does not say it did."""
    from memdyn.cli import analyze
    from memdyn.cli.command import Args
    from memdyn.studies import analyses

    losses = {"validation": [7.0, 3.0], "duplicates": [7.0, 1.0], "control": [7.0, 4.0]}
    _write_run(tmp_path / "standard/seed=0", 0, "standard", losses)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not the analysis's")
    values = dict(workdir=str(tmp_path / "standard/seed=0"), sweep=[], out=str(tmp_path / "out"))
    analyze.run(analyses()["memsinks"], Args("analyze memsinks", values, set(values)))
    wrote = capsys.readouterr().out.rsplit("wrote ", 1)[1].split(" in ")[0].split(", ")
    assert "memsinks_deletion.csv" not in os.listdir(tmp_path / "out")
    assert sorted(wrote) == sorted(set(os.listdir(tmp_path / "out")) - {"notes.txt"})
    assert "memsinks_summary.csv" in wrote and "memsinks.png" in wrote
