"""The measures of ``memdyn analyze forgetting`` (defined in ``analysis``'s docstring): the pairing of an insertion
fork with its sham control, a run's forgetting curve, the retained trace, the decay fit, the conditions over seeds
and the trend with size. Pure functions of pandas frames and configs; nothing is read or written here."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

FIT_FIELDS = ("asymptote", "asymptote_se", "amplitude", "amplitude_se", "tau", "tau_se")
CONDITION = ["size", "params", "insert_step", "repeats", "times", "every"]
MIN_FIT_POINTS = 6
# A decay is seen only on the points where it still deviates from the asymptote: those where the fitted decay
# term a exp(-t / tau) is at least e^-3 (~5%) of the amplitude, i.e. t < 3 tau. A fit on fewer is one jump and a
# guess at its shape (one deviating point fits any tau far below the step between evaluations, with zero error).
MIN_DECAY_POINTS = 3
DECAY_SPAN_TAUS = 3.0
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


def forgetting_curve(
    evals: pd.DataFrame, insert_steps: list[int], set_name: str = "special", sham: bool = False
) -> pd.DataFrame:
    """The set's evaluations from its first insertion on, one row per step (the state after that step's
    insertions), with ``insert_step``, ``last_insert_step``, ``num_insertions`` (0 for a ``sham`` run: its
    schedule inserts nothing), ``steps_since_insert`` (step - last insertion; negative between spaced
    insertions), ``after_last_insert`` and ``m_before`` (M at the last evaluation before the first insertion,
    NaN if none)."""
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
    curve["num_insertions"] = 0 if sham else len(insert_steps)
    curve["steps_since_insert"] = curve["step"] - last
    curve["after_last_insert"] = curve["step"] >= last
    pre = rows.loc[before].sort_values("step", kind="stable")["exact_match"]
    curve["m_before"] = float(pre.iloc[-1]) if len(pre) else math.nan
    return curve.reset_index(drop=True)


def _decay(t, b, a, tau):
    return b + a * np.exp(-t / tau)


def fit_decay(t: np.ndarray, d: np.ndarray) -> dict:
    """Least-squares ``b + a exp(-t / tau)`` with ``fit_identified`` (see ``analysis``'s docstring); the fields are
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
    gaps = np.diff(np.unique(t))
    decaying = int(np.sum(t - t.min() < DECAY_SPAN_TAUS * tau))
    identified = bool(
        np.all(np.isfinite(se))
        and np.all(se > 0)
        and abs(a) > 2 * se[1]
        and tau <= span / 2
        and tau >= gaps.min() / 2  # a decay within one step between evaluations is one jump, its shape unseen
        and decaying >= MIN_DECAY_POINTS
    )
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
