"""Memorization speed of runs: M per epoch, T(N, tau), T_update(N, tau) and the overfitting point.

Definitions after Tirumala et al. 2022 (``shared/papers.md`` section 1):

- Exact memorization M(f) is token accuracy on the training set. We never evaluate the whole training set
  at once; instead every trained example's exact-match fraction is recorded (``examples/``) in the forward
  pass of the update that trains it, i.e. just before that update. Since each example is seen once per
  epoch, ``M_e`` = token-weighted mean of these records over the steps of epoch ``e`` is M on the whole
  training set, measured as each example is revisited (the model changes during the epoch, so it is a
  sweep, not a snapshot). The ``num_examples % batch_size`` examples dropped from each epoch's order are
  not in it. An epoch whose steps are not all recorded (e.g. the last one of a run that stops mid-epoch)
  is kept with ``complete = False`` and ignored by ``t_epochs`` and ``final_m``.
- ``T(N, tau)``: epochs completed (``e + 1``) at the first complete epoch with ``M_e >= tau``; NaN if never.
- ``T_update(N, tau)``: first update ``U = step + 1`` at which the rolling mean (full windows of ``window``
  rows) of ``mem_update`` reaches ``tau``. ``train.csv`` holds every ``log_every``-th step only, so the
  window runs over logged rows; with ``log_every = 1`` these are consecutive updates.
- Overfitting point: the first validation evaluation (in step order) whose perplexity is higher than the
  previous evaluation's, in epochs (``step / steps_per_epoch``). "Memorization before overfitting" is
  ``M_e`` of the last epoch completed by then (NaN when validation perplexity never rises, or when no
  epoch was completed by then).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn import runs
from memdyn.analysis import Options, register
from memdyn.analysis.forgetting import _read_csv
from memdyn.runs import IDENTITY_COLUMNS

DEFAULT_TAUS = (0.5, 0.7, 0.9)
OUTPUTS = "memorization_summary.csv/.md, memorization_epochs.csv, memorization.png, t_tau.png"


def tau_label(tau: float) -> str:
    return f"{float(tau):g}"


def steps_per_epoch(train_frame: pd.DataFrame) -> int:
    """Steps per epoch from ``train.csv`` rows: round((step + 1) / epochs_done) of the last row."""
    last = train_frame.sort_values("step", kind="stable").iloc[-1]
    return int(round((float(last["step"]) + 1) / float(last["epochs_done"])))


def per_epoch_memorization(records: pd.DataFrame, spe: int) -> pd.DataFrame:
    """``M_e`` from per-example records (``step, exact_match, num_tokens``) given steps per epoch.

    Columns: ``epoch`` (1-based epochs completed), ``exact_match`` (token-weighted mean), ``num_tokens``,
    ``num_examples`` (records), ``num_steps`` (distinct steps recorded) and ``complete``.
    """
    frame = records.assign(epoch=records["step"].to_numpy() // spe + 1,
                           correct=records["exact_match"].to_numpy(float) * records["num_tokens"].to_numpy(float))
    grouped = frame.groupby("epoch", sort=True)
    out = pd.DataFrame({"num_tokens": grouped["num_tokens"].sum().astype(np.int64),
                        "correct": grouped["correct"].sum(),
                        "num_examples": grouped.size(),
                        "num_steps": grouped["step"].nunique()}).reset_index()
    tokens = out["num_tokens"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["exact_match"] = np.where(tokens > 0, out["correct"].to_numpy() / tokens, np.nan)
    out["complete"] = out["num_steps"] == spe
    return out[["epoch", "exact_match", "num_tokens", "num_examples", "num_steps", "complete"]]


def _identity(workdir: str, train: pd.DataFrame) -> dict:
    """Identity columns from train.csv, filled from config.json (and the directory name for ``run``)."""
    from_config = runs.identity(runs.read_config(workdir) or {}, workdir)
    identity = {}
    for column in IDENTITY_COLUMNS:
        value = train[column].iloc[0] if column in train.columns else math.nan
        if pd.isna(value):
            value = math.nan if from_config[column] is None else from_config[column]
        identity[column] = value.item() if isinstance(value, np.generic) else value
    return identity


def _load_train(workdir: str) -> pd.DataFrame:
    train = _read_csv(os.path.join(workdir, "train.csv"))
    if train.empty:
        raise ValueError(f"{workdir}: train.csv has no rows")
    return train.sort_values("step", kind="stable", ignore_index=True)


def _load_records(workdir: str) -> pd.DataFrame:
    from memdyn.writers import read_examples

    directory = os.path.join(workdir, "examples")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such directory: {directory} (was the run made with record_examples off?)")
    try:
        records = read_examples(directory)
    except FileNotFoundError:
        raise ValueError(f"{workdir}: no per-example records in {directory}") from None
    if records.empty:
        raise ValueError(f"{workdir}: no per-example records in {directory}")
    # A part re-written after a resume could repeat a step; keep the latest record of each.
    return records.drop_duplicates(["step", "example_id"], keep="last")


def _epoch_frame(workdir: str, train: pd.DataFrame) -> pd.DataFrame:
    frame = per_epoch_memorization(_load_records(workdir), steps_per_epoch(train))
    for column, value in _identity(workdir, train).items():
        frame[column] = value
    return frame


def epoch_memorization(workdir: str) -> pd.DataFrame:
    """``M_e`` per epoch of the run in ``workdir`` (see the module docstring), with identity columns.

    Raises FileNotFoundError naming a missing ``train.csv`` or ``examples/``; ValueError naming the workdir
    when it has no train rows or no per-example records.
    """
    return _epoch_frame(workdir, _load_train(workdir))


def t_epochs(epoch_frame: pd.DataFrame, taus=DEFAULT_TAUS) -> dict[float, float]:
    """T(N, tau) per tau: ``epoch`` of the first complete epoch with ``exact_match >= tau`` (NaN if none)."""
    frame = epoch_frame.sort_values("epoch", kind="stable")
    if "complete" in frame.columns:
        frame = frame[frame["complete"].astype(bool)]
    epochs = frame["epoch"].to_numpy(float)
    m = frame["exact_match"].to_numpy(float)
    result = {}
    for tau in taus:
        hit = np.flatnonzero(m >= tau)  # NaN compares False
        result[float(tau)] = float(epochs[hit[0]]) if len(hit) else math.nan
    return result


def t_updates(train_frame: pd.DataFrame, taus=DEFAULT_TAUS, window: int = 5) -> dict[float, float]:
    """T_update(N, tau) per tau: ``step + 1`` of the first row whose rolling mean of ``mem_update`` over the
    last ``window`` rows (full windows only) is ``>= tau`` (NaN if never)."""
    if window < 1:
        raise ValueError(f"window={window} must be positive")
    frame = train_frame.sort_values("step", kind="stable")
    rolled = frame["mem_update"].astype(float).rolling(window, min_periods=window).mean().to_numpy()
    updates = frame["step"].to_numpy(float) + 1
    result = {}
    for tau in taus:
        hit = np.flatnonzero(rolled >= tau)
        result[float(tau)] = float(updates[hit[0]]) if len(hit) else math.nan
    return result


def overfitting_point(eval_frame: pd.DataFrame, steps_per_epoch: float, set_name: str = "validation") -> dict:
    """First evaluation of ``set_name`` whose perplexity exceeds the previous one's.

    Returns ``overfit_step`` and ``overfit_epoch`` (= step / steps_per_epoch), both NaN if it never rises.
    Perplexity is taken from ``exp(loss)`` where the column is missing.
    """
    nan = {"overfit_step": math.nan, "overfit_epoch": math.nan}
    if eval_frame.empty or "set" not in eval_frame.columns:
        return nan
    keys = [k for k in ("step", "update") if k in eval_frame.columns]
    evals = eval_frame[eval_frame["set"] == set_name].sort_values(keys, kind="stable")
    if "perplexity" in evals.columns:
        ppl = evals["perplexity"].to_numpy(float)
    else:
        ppl = np.exp(evals["loss"].to_numpy(float))
    rises = np.flatnonzero(ppl[1:] > ppl[:-1])
    if not len(rises):
        return nan
    step = int(evals["step"].iloc[rises[0] + 1])
    return {"overfit_step": step, "overfit_epoch": step / steps_per_epoch}


def _memorization_before(epoch_frame: pd.DataFrame, overfit_epoch: float) -> float:
    """``M_e`` of the last complete epoch with ``epoch <= overfit_epoch``."""
    if not np.isfinite(overfit_epoch):
        return math.nan
    done = epoch_frame[(epoch_frame["epoch"] <= overfit_epoch + 1e-9) & epoch_frame["complete"].astype(bool)]
    return float(done.sort_values("epoch")["exact_match"].iloc[-1]) if len(done) else math.nan


def summarize_run(workdir: str, taus=DEFAULT_TAUS, window: int = 5) -> tuple[pd.DataFrame, dict]:
    """One run's epoch frame and summary row (see ``analyze_runs``)."""
    train = _load_train(workdir)
    evals = _read_csv(os.path.join(workdir, "eval.csv"))
    epochs = _epoch_frame(workdir, train)
    spe = steps_per_epoch(train)
    complete = epochs[epochs["complete"]]
    overfit = overfitting_point(evals, spe)
    row = {column: epochs[column].iloc[0] for column in IDENTITY_COLUMNS}
    row.update(steps_per_epoch=spe, epochs_trained=float(train["epochs_done"].iloc[-1]),
               final_m=float(complete["exact_match"].iloc[-1]) if len(complete) else math.nan)
    row.update({f"T_epochs_{tau_label(t)}": v for t, v in t_epochs(epochs, taus).items()})
    row.update({f"T_updates_{tau_label(t)}": v for t, v in t_updates(train, taus, window).items()})
    row.update(overfit, m_before_overfit=_memorization_before(epochs, overfit["overfit_epoch"]))
    return epochs, row


@register("memorization", help="per-epoch M(f), T(N, tau) in epochs and updates for tau in 0.5/0.7/0.9, the "
          "overfitting point and M(f) there", outputs=OUTPUTS)
def run(options: Options) -> pd.DataFrame:
    return analyze_runs(options.workdirs, out_dir=options.out_dir)


def analyze_runs(workdirs: list[str], taus=DEFAULT_TAUS, window: int = 5,
                 out_dir: str | None = None) -> pd.DataFrame:
    """Summary with one row per run: identity columns, ``steps_per_epoch``, ``epochs_trained`` (final
    epochs_done), ``final_m`` (M of the last complete epoch), ``T_epochs_<tau>``, ``T_updates_<tau>``,
    ``overfit_step``, ``overfit_epoch`` and ``m_before_overfit``.

    With ``out_dir``: memorization_summary.csv/.md, memorization_epochs.csv (all runs' epoch frames),
    memorization.png (M_e vs epochs) and t_tau.png (T(N, tau) vs params), each written atomically.
    """
    loaded = [summarize_run(w, taus, window) for w in workdirs]
    summary = pd.DataFrame([row for _, row in loaded])
    if out_dir is not None:
        epochs = pd.concat([e for e, _ in loaded], ignore_index=True) if loaded else pd.DataFrame()
        os.makedirs(out_dir, exist_ok=True)
        join = lambda name: os.path.join(out_dir, name)  # noqa: E731
        runs.atomic_write(join("memorization_summary.csv"), lambda p: summary.to_csv(p, index=False))
        runs.atomic_write(join("memorization_epochs.csv"), lambda p: epochs.to_csv(p, index=False))
        runs.atomic_write_text(join("memorization_summary.md"), _markdown(summary) + "\n")
        runs.atomic_write(join("memorization.png"), lambda p: _plot_epochs(epochs, summary, p))
        runs.atomic_write(join("t_tau.png"), lambda p: _plot_t_tau(summary, taus, p))
    return summary


def _markdown(summary: pd.DataFrame) -> str:
    from memdyn.analysis.tables import to_markdown

    return to_markdown(summary) if len(summary) else ""


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _size_colours(summary: pd.DataFrame, plt) -> dict:
    """Colour per model size, ordered by parameter count."""
    order = summary.sort_values("params", kind="stable") if summary["params"].notna().any() else summary
    sizes = list(dict.fromkeys(order["size"]))
    cmap = plt.get_cmap("viridis")
    return {s: cmap(i / max(len(sizes) - 1, 1) * 0.9) for i, s in enumerate(sizes)}


LINESTYLES = ("-", "--", ":", "-.")


def _plot_epochs(epochs: pd.DataFrame, summary: pd.DataFrame, png_path: str) -> None:
    """M_e of complete epochs against epochs completed: one line per run, colour by size, linestyle by seed."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    if len(summary):
        colours = _size_colours(summary, plt)
        seeds = list(dict.fromkeys(summary["seed"]))
        styles = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(seeds)}
        for _, row in summary.iterrows():
            run = epochs[(epochs["run"] == row["run"]) & epochs["complete"].astype(bool)].sort_values("epoch")
            ax.plot(run["epoch"], run["exact_match"], color=colours.get(row["size"], "C0"),
                    ls=styles.get(row["seed"], "-"), lw=1.2, marker=".", ms=3)
        handles = [Line2D([], [], color=c, label=str(s)) for s, c in colours.items()]
        if len(seeds) > 1:
            handles += [Line2D([], [], color="grey", ls=styles[s], label=f"seed {s}") for s in seeds]
        ax.legend(handles=handles, fontsize=7, title="size", title_fontsize=7)
    ax.set(xlabel="epochs completed", ylabel="exact memorization $M_e$", ylim=(0, 1),
           title="memorization of the training set per epoch")
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)


def _plot_t_tau(summary: pd.DataFrame, taus, png_path: str) -> None:
    """T(N, tau) in epochs against params (log x): per tau, mean over seeds that reached tau, min/max bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    # Runs differing in objective or learning rate are separate lines, not seeds of one point.
    variants = [c for c in ("causal", "peak_lr") if len(summary) and summary[c].nunique() > 1]
    groups = summary.groupby(variants, dropna=False) if variants else [((), summary)]
    plotted = False
    for g, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        suffix = ", ".join(f"{c}={v}" for c, v in zip(variants, key))
        for i, tau in enumerate(taus):
            column = f"T_epochs_{tau_label(tau)}"
            stats = part.groupby("params")[column].agg(["mean", "min", "max"]).dropna().reset_index()
            if stats.empty:
                continue
            err = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
            label = f"τ={tau_label(tau)}" + (f" ({suffix})" if suffix else "")
            ax.errorbar(stats["params"], stats["mean"], yerr=err, color=f"C{i % 10}",
                        ls=LINESTYLES[g % len(LINESTYLES)], marker="o", ms=4, capsize=3, label=label)
            plotted = True
    ax.set_xscale("log")
    ax.set(xlabel="parameters N", ylabel="T(N, τ) [epochs]",
           title="epochs to reach M ≥ τ (mean over seeds, min/max)")
    if plotted:
        ax.legend(fontsize=7)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
