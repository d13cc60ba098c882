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
  data pin it down: >= 6 points, amplitude a above twice its standard error, tau at most half the followed
  span (the decay happened within the window) and finite standard errors. Otherwise its fields are NaN.

Insertion and sham runs are paired when their configs agree on everything but the insertion's updates and the
run length (``pair_key``). Conditions (size, insertion step, repeats, spacing) are aggregated over seeds with
95% t intervals (``forgetting_conditions.csv/.md``), and ``size_trend`` fits the retained trace of one insertion
against log10(params) (``forgetting_trend.csv``).
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pandas as pd
from ml_collections import config_dict

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register
from memdyn.train import insertion

OUTPUTS = (
    "forgetting_curves.csv, forgetting_summary.csv, forgetting_conditions.csv/.md, forgetting_trend.csv, forgetting.png"
)
FIT_FIELDS = ("asymptote", "asymptote_se", "amplitude", "amplitude_se", "tau", "tau_se")
CONDITION = ["size", "params", "insert_step", "repeats", "times", "every"]
MIN_FIT_POINTS = 6
LATE_FRACTION = 0.5


def pair_key(config: dict) -> str:
    """What an insertion fork and its sham control share: the config without the run length, the evaluation and
    checkpoint schedules, and the insertion's updates (its step and set stay)."""
    c = {
        k: v
        for k, v in config.items()
        if k not in ("num_steps", "checkpoint", "eval", "log_every", "sharding", "record_examples")
    }
    c["insert"] = {
        "at_step": config["insert"]["at_step"],
        "set": config["insert"]["set"],
        "eval_every": config["insert"]["eval_every"],
    }
    return json.dumps(c, sort_keys=True)


def forgetting_curve(evals: pd.DataFrame, insert_steps: list[int], set_name: str = "special") -> pd.DataFrame:
    """The set's evaluations from its first insertion on, one row per step (the state after that step's
    insertions), with ``insert_step``, ``last_insert_step``, ``num_insertions``, ``steps_since_insert`` (step -
    last insertion; negative between spaced insertions), ``after_last_insert`` and ``m_before`` (M at the last
    evaluation before the first insertion, NaN if none)."""
    if not insert_steps:
        raise ValueError(f"set {set_name!r} was never inserted (config.insert.at_step is None)")
    first, last = insert_steps[0], insert_steps[-1]
    rows = evals[evals["set"] == set_name] if len(evals) else evals
    if rows.empty:
        raise ValueError(f"set {set_name!r} was never evaluated")
    rows = rows.reset_index(drop=True)  # file order: within a step, "before" precedes "after"
    at = rows["at_insertion"].fillna("") if "at_insertion" in rows.columns else pd.Series("", index=rows.index)
    before = (rows["step"] < first) | ((rows["step"] == first) & (at != "after"))
    curve = rows[~before].drop_duplicates("step", keep="last").sort_values("step", kind="stable").copy()
    curve["insert_step"] = first
    curve["last_insert_step"] = last
    curve["num_insertions"] = len(insert_steps)
    curve["steps_since_insert"] = curve["step"] - last
    curve["after_last_insert"] = curve["step"] >= last
    pre = rows.loc[before].sort_values("step", kind="stable")["exact_match"]
    curve["m_before"] = float(pre.iloc[-1]) if len(pre) else math.nan
    return curve.reset_index(drop=True)


def _decay(t, b, a, tau):
    return b + a * np.exp(-t / tau)


def fit_decay(t: np.ndarray, d: np.ndarray) -> dict:
    """Least-squares ``b + a exp(-t / tau)`` with ``fit_identified`` (see the module docstring); the fields are
    NaN when the fit is not identified."""
    nan_fit = {**dict.fromkeys(FIT_FIELDS, math.nan), "fit_identified": False}
    span = float(t.max() - t.min()) if len(t) else 0.0
    if len(t) < MIN_FIT_POINTS or span <= 0 or np.ptp(d) <= 1e-12:
        return nan_fit
    from scipy.optimize import OptimizeWarning, curve_fit

    p0 = [float(d[-len(d) // 2 :].mean()), float(d[0] - d[-len(d) // 2 :].mean()), span / 4]
    bounds = ([-1.0, -2.0, 1e-6], [1.0, 2.0, np.inf])
    p0[0] = float(np.clip(p0[0], -1.0, 1.0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # checked below via the standard errors
            params, cov = curve_fit(_decay, t - t.min(), d, p0=p0, bounds=bounds, maxfev=10_000)
    except (RuntimeError, ValueError):
        return nan_fit
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    b, a, tau = (float(p) for p in params)
    identified = bool(np.all(np.isfinite(se)) and abs(a) > 2 * se[1] and tau <= span / 2)
    if not identified:
        return nan_fit
    return {
        "asymptote": b,
        "asymptote_se": float(se[0]),
        "amplitude": a,
        "amplitude_se": float(se[1]),
        "tau": tau,
        "tau_se": float(se[2]),
        "fit_identified": True,
    }


def paired_difference(curve: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """``curve`` with ``control_exact_match`` (the sham run's M at the same step) and ``difference``; rows at
    steps the sham did not evaluate are dropped."""
    merged = curve.merge(
        control[["step", "exact_match"]].rename(columns={"exact_match": "control_exact_match"}), on="step", how="inner"
    )
    merged["difference"] = merged["exact_match"] - merged["control_exact_match"]
    return merged


def summarize(curve: pd.DataFrame, late_fraction: float = LATE_FRACTION) -> dict:
    """One run's summary from its curve (paired with a control when it has a ``difference`` column)."""
    head = curve.iloc[0]
    decay = curve[curve["after_last_insert"].astype(bool)]
    m = decay["exact_match"].to_numpy(float)
    summary = {
        "insert_step": int(head["insert_step"]),
        "last_insert_step": int(head["last_insert_step"]),
        "num_insertions": int(head["num_insertions"]),
        "m_before": float(head["m_before"]),
        "m_after": float(m[0]) if len(m) else math.nan,
        "baseline_min": float(m.min()) if len(m) else math.nan,
        "num_points": len(m),
    }
    if "difference" not in curve.columns:
        return summary
    t = decay["steps_since_insert"].to_numpy(float)
    d = decay["difference"].to_numpy(float)
    late_from = float(t.max()) * late_fraction if len(t) else math.nan
    late = d[t >= late_from] if len(t) else d
    at_last = t == 0  # the sham must have evaluated the step of the last insertion itself
    summary.update(
        jump=float(d[at_last][0]) if at_last.any() else math.nan,
        retained=float(late.mean()) if len(late) else math.nan,
        late_from_steps=late_from,
        num_late=len(late),
        **fit_decay(t, d),
    )
    return summary


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
    try:
        curve = forgetting_curve(evals, steps, set_name)
    except ValueError as error:
        raise ValueError(f"{workdir}: {error}") from None
    identity = runs.identity(config, workdir)
    curve["run"], curve["workdir"] = identity["run"], workdir
    return {
        "workdir": workdir,
        "config": config,
        "curve": curve,
        "identity": identity,
        "sham": bool(insert.get("sham", False)),
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
        runs.atomic_write_text(
            join("forgetting_conditions.md"), conditions_markdown(table) + "\n" + trend_markdown(trend)
        )
        runs.atomic_write(join("forgetting.png"), lambda p: _plot(curves, summary, table, set_name, p))
    return curves, summary


def conditions(summary: pd.DataFrame) -> pd.DataFrame:
    """Insertion runs with a control, aggregated over seeds per ``CONDITION``: ``n_seeds`` and mean / 95% t
    interval of ``m_before``, ``jump``, ``retained`` and ``baseline_min``; ``fits_identified`` counts seeds
    whose decay fit was identified."""
    from memdyn.studies import stats

    if summary.empty or "retained" not in summary.columns:
        return pd.DataFrame()
    paired = summary[~summary["sham"].astype(bool) & summary["control_run"].notna()]
    if paired.empty:
        return pd.DataFrame()
    table = stats.over_seeds(paired, CONDITION, ["m_before", "jump", "retained", "baseline_min"])
    identified = paired.groupby(CONDITION, sort=True)["fit_identified"].sum().astype(int).reset_index()
    table = table.merge(identified.rename(columns={"fit_identified": "fits_identified"}), on=CONDITION)
    return table.sort_values(["params", "insert_step", "repeats", "times"], kind="stable", ignore_index=True)


def size_trend(summary: pd.DataFrame, column: str = "retained") -> pd.DataFrame:
    """Does the trace of one insertion rise with size? Per insertion step, over the single-insertion runs of at
    least two sizes: the least-squares slope of ``column`` against log10(params), per decade of parameters, with
    its 95% t interval (n - 2 degrees of freedom; every seed of every size is one point)."""
    from scipy import stats

    if summary.empty or column not in summary.columns:
        return pd.DataFrame()
    single = summary[
        ~summary["sham"].astype(bool)
        & summary["control_run"].notna()
        & (summary["repeats"] == 1)
        & (summary["times"] == 1)
    ].dropna(subset=[column])
    rows = []
    for step, part in single.groupby("insert_step", sort=True):
        if part["params"].nunique() < 2 or len(part) < 3:
            continue
        fit = stats.linregress(np.log10(part["params"].astype(float)), part[column].astype(float))
        half = float(stats.t.ppf(0.975, len(part) - 2) * fit.stderr)
        rows.append(
            {
                "insert_step": int(step),
                "measure": column,
                "num_runs": len(part),
                "sizes": ",".join(part.sort_values("params")["size"].drop_duplicates()),
                "slope_per_decade": float(fit.slope),
                "slope_ci_low": float(fit.slope) - half,
                "slope_ci_high": float(fit.slope) + half,
                "p_value": float(fit.pvalue),
            }
        )
    return pd.DataFrame(rows)


def condition_label(row) -> str:
    label = f"{row['size']} @ step {int(row['insert_step'])}"
    if row["repeats"] > 1:
        label += f", {int(row['repeats'])}× in a row"
    if row["times"] > 1:
        label += f", {int(row['times'])}× every {int(row['every'])} steps"
    return label


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


def _plot(curves: pd.DataFrame, summary: pd.DataFrame, table: pd.DataFrame, set_name: str, png_path: str) -> None:
    """Left: insert − sham against steps since the last insertion, mean over seeds and 95% band per condition
    (the raw M of each run when no run has a control). Right: the retained trace per condition with its 95% CI,
    against parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memdyn.studies.stats import t_interval

    paired = "difference" in curves.columns and not table.empty
    fig, axes = plt.subplots(
        1, 2 if paired else 1, figsize=(13 if paired else 6.5, 4.4), constrained_layout=True, squeeze=False
    )
    ax = axes[0][0]
    if paired:
        inserted = summary[~summary["sham"].astype(bool) & summary["control_run"].notna()]
        for i, (_, row) in enumerate(table.iterrows()):
            same = np.logical_and.reduce([inserted[c] == row[c] for c in CONDITION])
            part = curves[curves["workdir"].isin(inserted.loc[same, "workdir"]) & curves["difference"].notna()]
            points = [(t, *t_interval(g["difference"])) for t, g in part.groupby("steps_since_insert")]
            if not points:
                continue
            t, mean, low, high, _ = (np.array(v) for v in zip(*points))
            colour = f"C{i % 10}"
            seeds = int(row["n_seeds"])
            ax.plot(t, mean, color=colour, lw=1.2, label=f"{condition_label(row)} ({seeds} seed{'s' * (seeds > 1)})")
            ax.fill_between(t, low, high, color=colour, alpha=0.2, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(ylabel=f"M({set_name}): insertion − sham control")
    else:
        for i, (_, part) in enumerate(curves.groupby("workdir", sort=False)):
            ax.plot(
                part["steps_since_insert"], part["exact_match"], color=f"C{i % 10}", lw=1.0, label=part["run"].iloc[0]
            )
        ax.set(ylabel=f"M ({set_name})")
    ax.axvline(0, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="steps since the last insertion")
    ax.legend(fontsize=7)
    if paired:
        ax = axes[0][1]
        for kind, (marker, select) in {
            "one insertion": ("o", (table["repeats"] == 1) & (table["times"] == 1)),
            "repeated / spaced": ("s", (table["repeats"] > 1) | (table["times"] > 1)),
        }.items():
            part = table[select].copy()
            if part.empty:
                continue
            if kind != "one insertion":  # beside the single insertion of the same size, not on top of it
                part["params"] = part["params"] * 1.06 ** (1 + np.arange(len(part)))
            err = [
                (part["retained_mean"] - part["retained_ci_low"]).fillna(0),
                (part["retained_ci_high"] - part["retained_mean"]).fillna(0),
            ]
            ax.errorbar(
                part["params"], part["retained_mean"], yerr=err, marker=marker, ls="none", capsize=3, label=kind
            )
            for j, (_, row) in enumerate(part.iterrows()):  # labels of one size stacked, not overprinted
                ax.annotate(
                    condition_label(row),
                    (row["params"], row["retained_mean"]),
                    fontsize=6,
                    xytext=(5, 2 - 9 * j),
                    textcoords="offset points",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="parameters N", ylabel="retained: late mean of insertion − sham")
        ax.legend(fontsize=7)
    fig.suptitle(f"forgetting of the {set_name!r} set (mean and 95% CI over seeds)")
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
