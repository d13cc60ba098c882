"""Forgetting of an inserted "special batch" (Tirumala et al. 2022, forgetting baseline).

A set of held-out examples is trained on at some step (maybe repeated, maybe spaced out);
afterwards its exact memorization M is evaluated every few steps while normal training goes on.
M decays towards a floor, the forgetting baseline: estimated here both as the minimum of M after
the last insertion and as the asymptote b of a fit M(t) = b + a * exp(-(t - t0) / tau).

Small models still generalize better while the special set is being forgotten, which lifts M on any held-out
text. A run that also evaluates a ``control`` set (held-out documents from the same distribution, never
inserted) at the same steps gets the *excess* memorization M_special - M_control, whose decay isolates
forgetting; the ``excess_*`` fields summarize it the same way.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd

from memdyn import runs
from memdyn.analysis import Options, register
from memdyn.runs import IDENTITY_COLUMNS
OUTPUTS = "forgetting_curves.csv, forgetting_summary.csv, forgetting.png"
FIT_FIELDS = ("asymptote", "asymptote_se", "amplitude", "tau")
MIN_FIT_POINTS = 4


def _set_insertions(insertions: pd.DataFrame, set_name: str) -> pd.DataFrame:
    return insertions[insertions["set"] == set_name] if len(insertions) else insertions


def _saw_insertions_at_step(evals: pd.DataFrame, insertions: pd.DataFrame) -> pd.Series:
    """Whether each eval ran after the insertions scheduled at its own step.

    An eval and an insertion can share a step number; ``inserted_updates`` (cumulative over all
    sets) tells the order. Without that column, evals at an insertion step count as after it.
    """
    if "inserted_updates" not in evals.columns:
        return pd.Series(True, index=evals.index)
    all_steps = np.sort(insertions["step"].to_numpy()) if len(insertions) else np.empty(0)
    done_by_step = np.searchsorted(all_steps, evals["step"].to_numpy(), side="right")
    return pd.Series(evals["inserted_updates"].to_numpy() >= done_by_step, index=evals.index)


def forgetting_curve(eval_frame: pd.DataFrame, insertions: pd.DataFrame,
                     set_name: str = "special", control: str | None = "control") -> pd.DataFrame:
    """Evaluations of ``set_name`` from its first insertion on, annotated for the forgetting fit.

    Added columns: ``insert_step`` (first insertion), ``last_insert_step``, ``num_insertions``,
    ``steps_since_insert`` (step - last_insert_step; negative between spaced insertions),
    ``after_last_insert`` (the eval saw every insertion, so it belongs to the decay) and
    ``m_before`` (M at the last eval before the first insertion, NaN if none; carried as a column
    so that ``fit_forgetting`` needs the curve only). When ``control`` was evaluated at the same steps:
    ``control_exact_match``, ``excess`` (M - control M) and ``excess_before``. Raises ValueError if the set was
    never inserted.
    """
    own = _set_insertions(insertions, set_name)
    if own.empty:
        raise ValueError(f"set {set_name!r} was never inserted")
    first, last = int(own["step"].min()), int(own["step"].max())
    evals = eval_frame[eval_frame["set"] == set_name].sort_values("step", kind="stable")
    saw = _saw_insertions_at_step(evals, insertions)
    step = evals["step"]
    before = (step < first) | ((step == first) & ~saw)
    after_last = (step > last) | ((step == last) & saw)

    curve = evals[~before].copy()
    curve["insert_step"] = first
    curve["last_insert_step"] = last
    curve["num_insertions"] = len(own)
    curve["steps_since_insert"] = curve["step"] - last
    curve["after_last_insert"] = after_last[~before]
    pre = evals.loc[before, "exact_match"]
    curve["m_before"] = float(pre.iloc[-1]) if len(pre) else math.nan
    if control is not None and (eval_frame["set"] == control).any():
        keys = ["step", "inserted_updates"] if "inserted_updates" in eval_frame.columns else ["step"]
        control_m = eval_frame.loc[eval_frame["set"] == control, keys + ["exact_match"]].drop_duplicates(keys)
        paired = evals.merge(control_m.rename(columns={"exact_match": "control_exact_match"}), on=keys,
                             how="left")["control_exact_match"].to_numpy()
        curve["control_exact_match"] = paired[~before.to_numpy()]
        curve["excess"] = curve["exact_match"] - curve["control_exact_match"]
        pre_excess = evals["exact_match"].to_numpy()[before.to_numpy()] - paired[before.to_numpy()]
        curve["excess_before"] = float(pre_excess[-1]) if len(pre_excess) else math.nan
    return curve.reset_index(drop=True)


def _decay(t, b, a, tau):
    return b + a * np.exp(-t / tau)


def _fit_decay(t: np.ndarray, m: np.ndarray, floor: float = 0.0) -> dict:
    """Least-squares fit of b + a * exp(-t / tau); NaN fields when it is not identifiable."""
    nan_fit = dict.fromkeys(FIT_FIELDS, math.nan)
    span = float(t.max() - t.min()) if len(t) else 0.0
    # A flat curve leaves a and tau undetermined; too few points leave no residual freedom.
    if len(t) < MIN_FIT_POINTS or span <= 0 or np.ptp(m) <= 1e-12:
        return nan_fit
    from scipy.optimize import OptimizeWarning, curve_fit

    p0 = [float(m.min()), float(m[0] - m.min()), span / 4]
    bounds = ([floor, 0.0, 1e-6], [1.0, np.inf, np.inf])  # M in [0, 1]; an excess over a control in [-1, 1]
    p0[0] = min(max(p0[0], floor), 1.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # checked below via finiteness
            params, cov = curve_fit(_decay, t, m, p0=p0, bounds=bounds, maxfev=10_000)
    except (RuntimeError, ValueError):
        return nan_fit
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(3, np.nan)
    if not (np.all(np.isfinite(params)) and np.isfinite(se[0])):
        return nan_fit
    b, a, tau = (float(p) for p in params)
    return {"asymptote": b, "asymptote_se": float(se[0]), "amplitude": a, "tau": tau}


def fit_forgetting(curve: pd.DataFrame) -> dict:
    """Summary of one run's forgetting curve (as made by ``forgetting_curve``); never raises on bad fits."""
    if curve.empty:
        return {"insert_step": math.nan, "last_insert_step": math.nan, "num_insertions": 0,
                "m_before": math.nan, "m_after": math.nan, "baseline_min": math.nan,
                **dict.fromkeys(FIT_FIELDS, math.nan), "num_points": 0}
    head = curve.iloc[0]
    decay = curve[curve["after_last_insert"].astype(bool)].dropna(subset=["exact_match"])
    t = decay["steps_since_insert"].to_numpy(dtype=float)
    m = decay["exact_match"].to_numpy(dtype=float)
    summary = {
        "insert_step": int(head["insert_step"]),
        "last_insert_step": int(head["last_insert_step"]),
        "num_insertions": int(head["num_insertions"]),
        "m_before": float(head["m_before"]),
        "m_after": float(m[0]) if len(m) else math.nan,
        "baseline_min": float(m.min()) if len(m) else math.nan,
        **_fit_decay(t, m),
        "num_points": len(m),
    }
    if "excess" in decay.columns:
        paired = decay.dropna(subset=["excess"])
        e = paired["excess"].to_numpy(dtype=float)
        fit = _fit_decay(paired["steps_since_insert"].to_numpy(dtype=float), e, floor=-1.0)
        summary.update({"excess_before": float(head["excess_before"]),
                        "excess_after": float(e[0]) if len(e) else math.nan,
                        "excess_baseline_min": float(e.min()) if len(e) else math.nan,
                        **{f"excess_{k}": v for k, v in fit.items()}})
        # The two sets differ in difficulty, so what insertion left behind is the excess relative to before it.
        summary["retained_min"] = summary["excess_baseline_min"] - summary["excess_before"]
        summary["retained_asymptote"] = summary["excess_asymptote"] - summary["excess_before"]
    return summary


def _read_csv(path: str) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # created but never written to
        return pd.DataFrame()


def _load_run(workdir: str, set_name: str) -> tuple[pd.DataFrame, dict]:
    """One run's curve (with identity columns) and its summary row."""
    evals = _read_csv(os.path.join(workdir, "eval.csv"))
    insertions = _read_csv(os.path.join(workdir, "insertions.csv"))
    if evals.empty:
        raise ValueError(f"{workdir}: eval.csv has no rows")
    if "run" not in evals.columns or evals["run"].isna().all():
        evals["run"] = runs.run_name(workdir)
    try:
        curve = forgetting_curve(evals, insertions, set_name)
    except ValueError as error:
        raise ValueError(f"{workdir}: {error}") from None
    identity = {c: evals[c].iloc[0] for c in IDENTITY_COLUMNS if c in evals.columns}
    return curve, {**identity, "set": set_name, **fit_forgetting(curve)}


@register("forgetting", help="forgetting curves of an inserted set (--set, default special), the forgetting "
          "baseline and the asymptote of an exponential fit", outputs=OUTPUTS)
def run(options: Options) -> pd.DataFrame:
    return analyze_runs(options.workdirs, set_name=options.set_name or "special", out_dir=options.out_dir)[1]


def analyze_runs(workdirs: list[str], set_name: str = "special",
                 out_dir: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Forgetting curves and fits of ``set_name`` for each run; optionally written to ``out_dir``.

    Returns (curves of all runs concatenated, summary with one row per run).
    """
    loaded = [_load_run(w, set_name) for w in workdirs]
    curves = pd.concat([c for c, _ in loaded], ignore_index=True) if loaded else pd.DataFrame()
    summary = pd.DataFrame([s for _, s in loaded])
    if out_dir is not None:
        join = lambda name: os.path.join(out_dir, name)  # noqa: E731
        runs.atomic_write(join("forgetting_curves.csv"), lambda p: curves.to_csv(p, index=False))
        runs.atomic_write(join("forgetting_summary.csv"), lambda p: summary.to_csv(p, index=False))
        runs.atomic_write(join("forgetting.png"), lambda p: _plot(curves, summary, set_name, p))
    return curves, summary



def _plot(curves: pd.DataFrame, summary: pd.DataFrame, set_name: str, png_path: str) -> None:
    """M of the set (and its excess over the control, when evaluated) against steps since the last insertion,
    one line per run, dashed fitted asymptotes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("exact_match", "asymptote", f"M ({set_name})")]
    if "excess" in curves.columns:
        panels.append(("excess", "excess_asymptote", f"M ({set_name}) - M (control)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), constrained_layout=True,
                             squeeze=False)
    for ax, (column, asymptote, ylabel) in zip(axes[0], panels):
        for i, row in summary.iterrows():
            run_curve = curves[curves["run"] == row["run"]]
            size = row.get("size", "")
            colour = f"C{i % 10}"  # one colour per run: runs of one size must stay apart
            label = f"{row['run']} ({size})" if size != "" else str(row["run"])
            ax.plot(run_curve["steps_since_insert"], run_curve[column], color=colour, lw=1.0, marker=".", ms=2.5,
                    label=label)
            se = row.get(asymptote + "_se", math.nan)
            if np.isfinite(row.get(asymptote, math.nan)) and se < 0.02:  # only well-determined asymptotes
                ax.axhline(row[asymptote], color=colour, ls="--", lw=0.8)
        ax.axvline(0, color="grey", ls=":", lw=0.8)
        ax.set(xlabel="steps since last insertion", ylabel=ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"forgetting of the {set_name!r} set (dashed: fitted asymptote)")
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)

