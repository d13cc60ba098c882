"""Forgetting of an inserted "special batch" (Tirumala et al. 2022), measured against a sham-insertion control.

A fork trains a held-out set (``config.insert.set``, default ``special``) as extra updates at step S (maybe
repeated, maybe spaced out), then keeps training normally while M on the set is evaluated every few steps. At
small scale M on *any* held-out text keeps rising as the model generalizes, so the raw curve cannot show what
the insertion left behind. The control is a sham fork (``config.insert.sham``): the same checkpoint, the same
example order and evaluations, no inserted updates. With ``d(t) = M_insert(t) - M_sham(t)`` at the same step:

- ``m_before``: M right before the (first) insertion; ``m_after``: right after the last one.
- ``baseline_min``: the paper's forgetting baseline, min M over the evaluations after the last insertion.
- ``jump``: d right after the last insertion (what the insertion put in); NaN when the sham has no evaluation
  at that step (give the sham the same ``insert.every`` / ``insert.times`` schedule).
- ``retained``: mean d over the late evaluations, those at least ``late_fraction`` (default 1/2) of the
  followed span after the last insertion: the insertion's trace once the fast decay is over.
- a fit ``d(t) = b + a exp(-t / tau)`` after the last insertion, reported (``fit_identified``) only when the
  data pin it down: >= 6 points, of which >= 3 still deviate (t < 3 tau: the decay term is at least ~5% of
  a), amplitude a above twice its standard error, tau at most half the followed span (the decay happened
  within the window) and at least half the smallest step between evaluations (a faster decay is one jump
  whose shape is unseen), and finite positive standard errors. Otherwise its fields are NaN.

Insertion and sham runs are paired when their configs agree on everything but the insertion's updates and the
run length (``pair_key``). Conditions (size, insertion step, repeats, spacing) are aggregated over seeds with
95% t intervals (``forgetting_conditions.csv/.md``), and ``size_trend`` fits the retained trace of one insertion
against log10(params) (``forgetting_trend.csv``).

The measures are computed in ``measures`` (pure functions of frames), the figure drawn in ``plots``; this module
reads the runs, pairs them, writes the tables and registers the analysis.
"""

from __future__ import annotations

import os

import pandas as pd
from absl import logging
from ml_collections import config_dict

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register
from memdyn.studies.forgetting.measures import (
    FIT_FIELDS,  # noqa: F401 (read as analysis.FIT_FIELDS by the tests)
    LATE_FRACTION,
    conditions,
    forgetting_curve,
    pair_key,
    paired_difference,
    size_trend,
    summarize,
)
from memdyn.studies.forgetting.plots import condition_label, plot
from memdyn.train import insertion

OUTPUTS = (
    "forgetting_curves.csv, forgetting_summary.csv, forgetting_conditions.csv/.md, forgetting_trend.csv, forgetting.png"
)


def _load(workdir: str, set_name: str) -> dict:
    config = runs.read_config(workdir)
    if config is None:
        raise FileNotFoundError(f"{workdir}: no config.json")
    evals = read_csv(os.path.join(workdir, "eval.csv"))
    if evals.empty:
        raise ValueError(f"{workdir}: eval.csv has no rows")
    insert = config["insert"]
    steps = (
        insertion.insertion_steps(config_dict.ConfigDict(insert), config["num_steps"])
        if insert["at_step"] is not None
        else []
    )
    sham = bool(insert.get("sham", False))
    try:
        curve = forgetting_curve(evals, steps, set_name, sham=sham)
    except ValueError as error:
        raise ValueError(f"{workdir}: {error}") from None
    identity = runs.identity(config, workdir)
    curve["run"], curve["workdir"] = identity["run"], workdir
    return {
        "workdir": workdir,
        "config": config,
        "curve": curve,
        "identity": identity,
        "sham": sham,
        "key": pair_key(config),
    }


def analyze_runs(
    workdirs: list[str], set_name: str = "special", out_dir: str | None = None, late_fraction: float = LATE_FRACTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and summaries of ``set_name`` for each run, insertion runs paired with their sham controls.

    Returns (curves of all runs, summary with one row per run: identity columns, ``workdir``, ``set``, ``sham``,
    ``control_run`` (the sham's workdir), the fields of ``summarize``). With ``out_dir`` also writes
    forgetting_conditions.csv/.md (``conditions``), forgetting_trend.csv (``size_trend``) and forgetting.png.
    """
    loaded = [_load(w, set_name) for w in workdirs]
    shams = {}
    for run in loaded:
        if run["sham"]:
            shams.setdefault(run["key"], run)
    curves, rows = [], []
    for run in loaded:
        curve, control = run["curve"], None if run["sham"] else shams.get(run["key"])
        if control is not None:
            curve = paired_difference(curve, control["curve"])
        insert = run["config"]["insert"]
        rows.append(
            {
                **run["identity"],
                "workdir": run["workdir"],
                "set": set_name,
                "sham": run["sham"],
                "control_run": control["workdir"] if control else None,
                "repeats": insert["repeats"],
                "times": insert["times"],
                "every": insert["every"],
                **summarize(curve, late_fraction),
            }
        )
        curves.append(curve.assign(sham=run["sham"]))
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    summary = pd.DataFrame(rows)
    if out_dir is not None:
        table = conditions(summary)
        join = lambda name: os.path.join(out_dir, name)  # noqa: E731
        os.makedirs(out_dir, exist_ok=True)
        runs.atomic_write(join("forgetting_curves.csv"), lambda p: curves.to_csv(p, index=False))
        runs.atomic_write(join("forgetting_summary.csv"), lambda p: summary.to_csv(p, index=False))
        runs.atomic_write(join("forgetting_conditions.csv"), lambda p: table.to_csv(p, index=False))
        trend = size_trend(summary)
        runs.atomic_write(join("forgetting_trend.csv"), lambda p: trend.to_csv(p, index=False))
        if trend.empty:
            logging.warning("%s", no_trend_line(summary))
        trend_text = trend_markdown(trend) if not trend.empty else f"\n{no_trend_line(summary)}.\n"
        runs.atomic_write_text(join("forgetting_conditions.md"), conditions_markdown(table) + "\n" + trend_text)
        runs.atomic_write(join("forgetting.png"), lambda p: plot(curves, summary, table, set_name, p))
    return curves, summary


def no_trend_line(summary: pd.DataFrame) -> str:
    """Why forgetting_trend.csv is empty, in one line."""
    sizes = sorted(set(summary["size"].astype(str))) if "size" in summary.columns else []
    return (
        "forgetting_trend.csv is empty: the size trend needs paired single-insertion runs of at least two sizes "
        f"(and three runs) at one insertion step; these runs have size(s) {', '.join(sizes) or 'none'}"
    )


def conditions_markdown(table: pd.DataFrame) -> str:
    from memdyn.studies.stats import format_ci
    from memdyn.studies.tables import to_markdown

    if table.empty:
        return ""
    cell = lambda row, c: format_ci(row[f"{c}_mean"], row[f"{c}_ci_low"], row[f"{c}_ci_high"], 4)  # noqa: E731
    rows = [
        {
            "condition": condition_label(row),
            "params": int(row["params"]),
            "seeds": int(row["n_seeds"]),
            "M before": cell(row, "m_before"),
            "jump (insert − sham)": cell(row, "jump"),
            "retained (insert − sham, late)": cell(row, "retained"),
            "fits identified": f"{int(row['fits_identified'])}/{int(row['n_seeds'])}",
        }
        for _, row in table.iterrows()
    ]
    return to_markdown(pd.DataFrame(rows))


def trend_markdown(trend: pd.DataFrame) -> str:
    lines = [
        f"\nOne insertion at step {int(r['insert_step'])}, {r['measure']} against size ({r['sizes']}, "
        f"{int(r['num_runs'])} runs): slope {r['slope_per_decade']:+.4f} per decade of parameters, 95% CI "
        f"[{r['slope_ci_low']:+.4f}, {r['slope_ci_high']:+.4f}], p = {r['p_value']:.2g}.\n"
        for _, r in trend.iterrows()
    ]
    return "".join(lines)


@register(
    "forgetting",
    help="forgetting of an inserted set (--set, default special) against its sham-insertion "
    "control: jump, retained trace and decay fits, per run and over seeds with 95% CIs",
    outputs=OUTPUTS,
)
def run(options: Options) -> pd.DataFrame:
    # A sweep directory also holds the parents the forks started from: only runs that insert (or sham) count.
    inserting = [
        w for w in options.workdirs if ((runs.read_config(w) or {}).get("insert") or {}).get("at_step") is not None
    ]
    if not inserting:
        raise ValueError(
            f"none of the {len(options.workdirs)} run(s) inserts a set (config.insert.at_step is None everywhere)"
        )
    return analyze_runs(inserting, set_name=options.set_name or "special", out_dir=options.out_dir)[1]
