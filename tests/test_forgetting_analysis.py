"""Forgetting analysis on synthetic eval/insertions CSVs (no JAX, no training)."""

import json
import math
import os
import re

import numpy as np
import pandas as pd
import pytest

from memdyn import runs as memdyn_runs
from memdyn.analysis import forgetting

IDENTITY = dict(size="nano", params=30000, causal=True, seed=0, peak_lr=1e-3, batch_size=8, seq_len=32)
FIT_KEYS = ("asymptote", "asymptote_se", "amplitude", "tau")


def decay(steps, t0=100, b=0.3, a=0.5, tau=40.0, noise=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return b + a * np.exp(-(np.asarray(steps) - t0) / tau) + rng.normal(0, noise, len(steps))


def write_run(workdir, insert_steps, curve_steps=None, curve_m=None, run=None, size="nano"):
    """Writes eval.csv (pre-insertion evals at 50 and 90 with M=0.2, then the curve) and insertions.csv."""
    curve_steps = np.arange(100, 601, 10) if curve_steps is None else np.asarray(curve_steps)
    curve_m = decay(curve_steps, t0=max(insert_steps)) if curve_m is None else np.asarray(curve_m)
    rows = [dict(step=s, set="special", exact_match=0.2, loss=3.0) for s in (50, 90)]
    rows += [dict(step=int(s), set="special", exact_match=float(m), loss=1.0) for s, m in zip(curve_steps, curve_m)]
    rows += [dict(step=int(s), set="validation", exact_match=0.1, loss=3.5) for s in curve_steps]
    evals = pd.DataFrame(rows)
    # evals at an insertion step run after it: cumulative inserted updates include that step's.
    evals["inserted_updates"] = [sum(i <= s for i in insert_steps) for s in evals["step"]]
    for key, value in {**IDENTITY, "size": size}.items():
        evals[key] = value
    if run is not None:
        evals["run"] = run
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:  # what makes the directory a run
        json.dump({"model": {"size": size}}, f)
    evals.to_csv(os.path.join(workdir, "eval.csv"), index=False)
    insertions = pd.DataFrame([dict(step=s, set="special", repeat=r, loss=1.0, exact_match=0.5)
                               for s in sorted(set(insert_steps)) for r in range(insert_steps.count(s))])
    insertions.to_csv(os.path.join(workdir, "insertions.csv"), index=False)
    return evals, insertions


def test_fit_recovers_decay(tmp_path):
    evals, insertions = write_run(tmp_path, [100])
    curve = forgetting.forgetting_curve(evals, insertions)
    assert curve["step"].min() == 100 and (curve["set"] == "special").all()
    fit = forgetting.fit_forgetting(curve)
    assert fit["asymptote"] == pytest.approx(0.3, abs=0.02)
    assert fit["tau"] == pytest.approx(40, abs=6)
    assert 0 < fit["asymptote_se"] < 0.02
    assert fit["baseline_min"] == pytest.approx(curve["exact_match"].min())
    assert fit["m_before"] == 0.2
    assert fit["m_after"] == pytest.approx(0.8, abs=0.02)
    assert fit["num_insertions"] == 1 and fit["num_points"] == 51


def test_repeated_insertions_counted(tmp_path):
    evals, insertions = write_run(tmp_path, [100, 100, 100])
    fit = forgetting.fit_forgetting(forgetting.forgetting_curve(evals, insertions))
    assert fit["num_insertions"] == 3 and fit["insert_step"] == fit["last_insert_step"] == 100


def test_spaced_insertions_fit_after_last(tmp_path):
    evals, insertions = write_run(tmp_path, [100, 200, 300])
    curve = forgetting.forgetting_curve(evals, insertions)
    fit = forgetting.fit_forgetting(curve)
    assert (fit["insert_step"], fit["last_insert_step"], fit["num_insertions"]) == (100, 300, 3)
    assert curve["steps_since_insert"].min() == -200
    assert fit["num_points"] == len(range(300, 601, 10))
    assert fit["asymptote"] == pytest.approx(0.3, abs=0.02)


def test_eval_before_insertion_at_same_step_is_pre_insertion():
    evals = pd.DataFrame(dict(step=[90, 100, 110], set="special", exact_match=[0.2, 0.25, 0.8],
                              inserted_updates=[0, 0, 1]))
    insertions = pd.DataFrame(dict(step=[100], set="special", repeat=[0]))
    curve = forgetting.forgetting_curve(evals, insertions)
    assert list(curve["step"]) == [110] and curve["m_before"].iloc[0] == 0.25


@pytest.mark.parametrize("steps,m", [(np.arange(100, 601, 10), np.full(51, 0.4)),
                                     ([100, 110, 120], [0.8, 0.6, 0.5])])
def test_degenerate_curves_give_nan_fit(tmp_path, steps, m):
    evals, insertions = write_run(tmp_path, [100], curve_steps=steps, curve_m=m)
    fit = forgetting.fit_forgetting(forgetting.forgetting_curve(evals, insertions))
    assert all(math.isnan(fit[k]) for k in FIT_KEYS)
    assert fit["baseline_min"] == pytest.approx(min(m))


def test_analyze_runs_writes_outputs(tmp_path):
    write_run(tmp_path / "sweep" / "a", [100], run="a", size="nano")
    write_run(tmp_path / "sweep" / "b", [100, 100], size="micro")  # no run column: basename
    found = memdyn_runs.find_runs(str(tmp_path / "sweep"))
    assert [r.label for r in found] == ["a", "b"]
    runs = [r.workdir for r in found]
    out = tmp_path / "out"
    curves, summary = forgetting.analyze_runs(runs, out_dir=str(out))
    assert sorted(os.listdir(out)) == ["forgetting.png", "forgetting_curves.csv", "forgetting_summary.csv"]
    assert list(pd.read_csv(out / "forgetting_summary.csv")["run"]) == ["a", "b"]
    assert len(pd.read_csv(out / "forgetting_curves.csv")) == len(curves) == 2 * 51
    assert list(summary["num_insertions"]) == [1, 2] and list(summary["size"]) == ["nano", "micro"]


def test_missing_inputs_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "eval.csv"))):
        forgetting.analyze_runs([str(tmp_path)])
    write_run(tmp_path, [100])
    pd.DataFrame(columns=["step", "set", "repeat", "loss", "exact_match"]).to_csv(
        tmp_path / "insertions.csv", index=False)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        forgetting.analyze_runs([str(tmp_path)])


def test_excess_over_a_control_set_separates_forgetting_from_generalization(tmp_path):
    """M on the special set rises with generalization (as the control's does) while the memorized excess decays."""
    evals, insertions = write_run(tmp_path, [100])
    steps = np.arange(100, 601, 10)
    control = 0.2 + 0.1 * (steps - 100) / 500  # generalization keeps improving on unseen text
    excess = decay(steps, t0=100, b=0.05, a=0.3, tau=40.0, noise=0.002, seed=1)
    special = evals["set"] == "special"
    evals.loc[special & (evals.step >= 100), "exact_match"] = control + excess
    evals.loc[special & (evals.step < 100), "exact_match"] = 0.2
    controls = evals[special].assign(set="control")
    controls.loc[controls.step >= 100, "exact_match"] = control
    controls.loc[controls.step < 100, "exact_match"] = 0.19
    evals = pd.concat([evals, controls], ignore_index=True)
    curve = forgetting.forgetting_curve(evals, insertions)
    np.testing.assert_allclose(curve["excess"], excess, atol=1e-12)
    fit = forgetting.fit_forgetting(curve)
    assert fit["excess_before"] == pytest.approx(0.01)
    assert fit["excess_asymptote"] == pytest.approx(0.05, abs=0.01)
    assert fit["excess_tau"] == pytest.approx(40, abs=6)
    assert fit["retained_asymptote"] == pytest.approx(0.04, abs=0.01)
    # without the control, the raw M does not decay to the memorization floor
    assert fit["asymptote"] > 0.2
