"""Forgetting analysis on hand-made run directories (no JAX, no training): curves, the sham pairing, the
retained trace, fits reported only when identified, and seed intervals."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from memdyn.studies.forgetting import analysis as forgetting
from memdyn.studies.forgetting import measures

STEPS = np.arange(100, 601, 10)


def config(seed=0, size="nano", params=30000, at_step=100, sham=False, repeats=1, times=1, every=0, num_steps=601):
    return {
        "seed": seed,
        "num_steps": num_steps,
        "batch_size": 8,
        "init_from": f"parent/{size}/{seed}@100",
        "model": {"size": size, "params": params, "causal": True},
        "optimizer": {"lr": 1e-3},
        "data": {"seq_len": 32},
        "eval": {"every": 0},
        "insert": {
            "set": "special",
            "at_step": at_step,
            "repeats": repeats,
            "times": times,
            "every": every,
            "eval_every": 10,
            "sham": sham,
        },
    }


def write_run(workdir, m_after, m_before=0.2, **fields):
    """A run whose special set has M = ``m_before`` before the insertion at step 100 and ``m_after[i]`` at
    ``STEPS[i]`` after it (the row at step 100 is the "after" one)."""
    c = config(**fields)
    rows = [
        dict(step=50, set="special", at_insertion="", exact_match=m_before),
        dict(step=100, set="special", at_insertion="before", exact_match=m_before),
    ]
    rows += [
        dict(step=int(s), set="special", at_insertion="after" if s == 100 else "", exact_match=float(m))
        for s, m in zip(STEPS, m_after)
    ]
    rows += [dict(step=int(s), set="validation", at_insertion="", exact_match=0.1) for s in STEPS]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(c, f)
    pd.DataFrame(rows).assign(loss=1.0).to_csv(os.path.join(workdir, "eval.csv"), index=False)
    return str(workdir)


def decay(b, a, tau, noise=0.0, seed=0, level=0.2):
    rng = np.random.default_rng(seed)
    return level + b + a * np.exp(-(STEPS - 100) / tau) + rng.normal(0, noise, len(STEPS))


def test_curve_starts_after_the_insertion_and_keeps_m_before(tmp_path):
    workdir = write_run(tmp_path / "a", decay(0.05, 0.3, 40.0))
    curves, summary = forgetting.analyze_runs([workdir])
    row = summary.iloc[0]
    assert row["m_before"] == 0.2 and row["m_after"] == pytest.approx(0.2 + 0.35)
    assert curves["step"].tolist() == STEPS.tolist()  # one row per step, the "after" one at the insertion
    assert row["baseline_min"] == pytest.approx(decay(0.05, 0.3, 40.0).min())
    assert "retained" not in summary.columns  # no sham: nothing paired


def test_sham_pairing_retained_trace_and_identified_fit(tmp_path):
    sham = write_run(tmp_path / "sham", np.full(len(STEPS), 0.2) + np.linspace(0, 0.1, len(STEPS)), sham=True)
    inserted = write_run(tmp_path / "ins", decay(0.02, 0.3, 40.0) + np.linspace(0, 0.1, len(STEPS)))
    other_seed = write_run(tmp_path / "other", decay(0.5, 0.3, 40.0), seed=1)  # no sham of its own seed
    curves, summary = forgetting.analyze_runs([sham, inserted, other_seed])
    row = summary.set_index("workdir").loc[inserted]
    assert row["control_run"] == sham and not row["sham"]
    assert math.isnan(summary.set_index("workdir").loc[other_seed, "retained"])
    assert row["jump"] == pytest.approx(0.32)  # 0.02 + 0.3 above the sham at the insertion step
    t = STEPS - 100
    late = t >= t.max() / 2
    expected = (0.02 + 0.3 * np.exp(-t / 40.0))[late].mean()
    assert row["retained"] == pytest.approx(expected) and row["num_late"] == late.sum()
    assert row["fit_identified"] and row["asymptote"] == pytest.approx(0.02, abs=1e-6)
    assert row["tau"] == pytest.approx(40.0, rel=1e-4)
    paired = curves[curves["workdir"] == inserted]
    np.testing.assert_allclose(paired["difference"], 0.02 + 0.3 * np.exp(-t / 40.0), atol=1e-12)


@pytest.mark.parametrize(
    "difference",
    [
        np.full(len(STEPS), 0.01),  # flat: nothing decays
        np.random.default_rng(0).normal(0.0, 0.01, len(STEPS)),  # noise only
        0.3 * np.exp(-(STEPS - 100) / 5000.0),  # a decay far slower than the window: the asymptote is a guess
        np.where(STEPS == 100, 0.3, 0.0),  # one deviating point: any tau far below a step fits it exactly
        np.where(STEPS == 100, 0.3, 0.01) + np.random.default_rng(1).normal(0.0, 0.002, len(STEPS)),
    ],
)
def test_unidentified_fits_are_not_reported(tmp_path, difference):
    sham = write_run(tmp_path / "sham", np.full(len(STEPS), 0.2), sham=True)
    inserted = write_run(tmp_path / "ins", 0.2 + difference)
    _, summary = forgetting.analyze_runs([sham, inserted])
    row = summary.set_index("workdir").loc[inserted]
    assert not row["fit_identified"]
    assert all(math.isnan(row[k]) for k in forgetting.FIT_FIELDS)
    assert np.isfinite(row["retained"])  # the late mean needs no model


def test_one_deviating_point_is_not_an_identified_fit():
    """The insertion's jump is seen at one evaluation only: a fit with tau = 0.005 steps and tau_se = 0 was
    reported identified; a decay needs at least 3 deviating points and a tau not far below one step."""
    t = np.arange(0.0, 281.0, 5.0)
    d = np.where(t == 0, 0.3, 0.01)
    fit = measures.fit_decay(t, d)
    assert not fit["fit_identified"] and all(math.isnan(fit[k]) for k in forgetting.FIT_FIELDS)


def test_a_fast_decay_seen_on_a_few_points_stays_identified():
    """The committed fits (tau 11 to 115 steps, evaluations every 5 steps) keep their identification."""
    t = np.arange(0.0, 281.0, 5.0)
    d = 0.01 + 0.015 * np.exp(-t / 11.3) + np.random.default_rng(0).normal(0.0, 0.002, len(t))
    fit = measures.fit_decay(t, d)
    assert fit["fit_identified"] and fit["tau"] == pytest.approx(11.3, rel=0.3) and fit["tau_se"] > 0


def test_conditions_over_seeds_with_t_intervals(tmp_path):
    workdirs, retained = [], []
    for seed, b in enumerate((0.01, 0.03, 0.02)):
        workdirs.append(write_run(tmp_path / f"sham{seed}", np.full(len(STEPS), 0.2), seed=seed, sham=True))
        workdirs.append(write_run(tmp_path / f"ins{seed}", decay(b, 0.2, 30.0), seed=seed))
        retained.append((b + 0.2 * np.exp(-(STEPS - 100) / 30.0))[(STEPS - 100) >= 250].mean())
    out = tmp_path / "out"
    _, summary = forgetting.analyze_runs(workdirs, out_dir=str(out))
    table = pd.read_csv(out / "forgetting_conditions.csv")
    assert len(table) == 1 and table["n_seeds"].item() == 3 and table["fits_identified"].item() == 3
    mean, sd = np.mean(retained), np.std(retained, ddof=1)
    half = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert table["retained_mean"].item() == pytest.approx(mean)
    assert (table["retained_ci_low"].item(), table["retained_ci_high"].item()) == pytest.approx(
        (mean - half, mean + half)
    )
    assert {
        "forgetting_curves.csv",
        "forgetting_summary.csv",
        "forgetting_conditions.csv",
        "forgetting_conditions.md",
        "forgetting.png",
    } <= set(os.listdir(out))
    assert "nano @ step 100" in (out / "forgetting_conditions.md").read_text()


def test_a_sham_reports_no_insertion(tmp_path):
    """A sham fork inserts nothing: 0 insertions (its schedule stays, to pair it), the insertion fork its own."""
    sham = write_run(tmp_path / "sham", np.full(len(STEPS), 0.2), sham=True, times=3, every=50)
    inserted = write_run(tmp_path / "ins", decay(0.05, 0.3, 40.0), times=3, every=50)
    curves, summary = forgetting.analyze_runs([sham, inserted])
    rows = summary.set_index("workdir")
    assert rows.loc[sham, "sham"] and rows.loc[sham, "num_insertions"] == 0
    assert (rows.loc[sham, "insert_step"], rows.loc[sham, "last_insert_step"]) == (100, 200)
    assert rows.loc[inserted, "num_insertions"] == 3 and rows.loc[inserted, "control_run"] == sham
    assert (curves.loc[curves["workdir"] == sham, "num_insertions"] == 0).all()


def test_an_empty_trend_is_said_in_one_line(tmp_path, caplog):
    """Runs of one size give no size trend: forgetting_trend.csv is empty and the log and Markdown say why."""
    workdirs = [write_run(tmp_path / "sham", np.full(len(STEPS), 0.2), sham=True)]
    workdirs.append(write_run(tmp_path / "ins", decay(0.05, 0.3, 40.0)))
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        forgetting.analyze_runs(workdirs, out_dir=str(out))
    assert (out / "forgetting_trend.csv").read_text().strip() == ""
    lines = [r.getMessage() for r in caplog.records if "forgetting_trend.csv is empty" in r.getMessage()]
    assert len(lines) == 1 and "at least two sizes" in lines[0] and "size(s) nano" in lines[0]
    assert "needs paired single-insertion runs of at least two sizes" in (out / "forgetting_conditions.md").read_text()


def test_spaced_insertions_decay_after_the_last(tmp_path):
    workdir = write_run(tmp_path / "spaced", decay(0.05, 0.3, 40.0), times=3, every=50)
    curves, summary = forgetting.analyze_runs([workdir])
    row = summary.iloc[0]
    assert (row["insert_step"], row["last_insert_step"], row["num_insertions"]) == (100, 200, 3)
    assert curves.loc[curves["step"] == 150, "steps_since_insert"].item() == -50
    assert not curves.loc[curves["step"] < 200, "after_last_insert"].any()


def test_missing_inputs_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        forgetting.analyze_runs([str(tmp_path)])
    workdir = write_run(tmp_path / "never", decay(0.0, 0.1, 10.0), at_step=None)
    with pytest.raises(ValueError, match="never inserted"):
        forgetting.analyze_runs([workdir])


def test_jump_needs_an_evaluation_at_the_last_insertion_step(tmp_path):
    """A spaced insertion whose last step (202) the runs did not evaluate has no jump, not a later row's value."""
    sham = write_run(tmp_path / "sham", np.full(len(STEPS), 0.2), sham=True)
    spaced = write_run(tmp_path / "spaced", decay(0.05, 0.3, 40.0), times=3, every=103 // 2)
    _, summary = forgetting.analyze_runs([sham, spaced])
    row = summary.set_index("workdir").loc[spaced]
    assert row["last_insert_step"] == 202 and math.isnan(row["jump"]) and np.isfinite(row["retained"])
