"""Memorization speed of runs: M(f) after each epoch, T(N, tau), T_update(N, tau) and the overfitting point.

Definitions after Tirumala et al. 2022:

- Exact memorization M(f) is token accuracy on the training set: the fraction of scored positions (every real
  next token of a causal LM; the ``<mask>`` positions of a masked LM) whose argmax is the true token. ``M_e`` is
  M(f) of the model after ``e`` whole epochs (every example trained ``e`` times), ``e = 0`` the untrained model.
  Two sources (``m_from``):

  * ``train_eval`` (the default when the run has it): the whole training set evaluated at the step where epoch
    ``e`` ends (``eval.epoch_sets`` holding ``train``; rows of ``eval.csv`` with ``set == "train"``). This is
    exactly ``memdyn eval --set=train`` at the checkpoint after ``e`` epochs.
  * ``in_step``: every trained example's exact match recorded in the forward pass of the update that trains it
    (``examples/``), token-weighted over the steps of epoch ``e`` (0-based). Each example is then scored just
    before its ``(e+1)``-th update, after ``e`` updates on it, so these records estimate ``M_e``: a sweep over the
    epoch during which the model changes, not a snapshot, and it never reaches the final epoch. An epoch whose
    steps are not all recorded is kept with ``complete = False`` and ignored below.
- ``T(N, tau)``: the first ``e`` with ``M_e >= tau`` among complete epochs; NaN if never.
- ``T_update(N, tau)``: first update ``U = step + 1`` at which the rolling mean (full windows of ``window``
  rows) of ``mem_update`` reaches ``tau``. ``train.csv`` holds every ``log_every``-th step only, so the
  window runs over logged rows; with ``log_every = 1`` these are consecutive updates.
- Overfitting point: the first validation evaluation (in step order) whose perplexity is higher than the
  previous evaluation's, in epochs (``step / steps_per_epoch``). "Memorization before overfitting" is ``M_e``
  at that epoch (the last complete epoch ``e <= overfit_epoch``; NaN when validation perplexity never rises).
- Generalization gap: ``M_e`` minus M(f) of the validation set evaluated after the same epoch, at that epoch
  (``gap_before_overfit``) and at the last epoch (``final_gap``); NaN where validation was not evaluated then.

Runs that differ only in their seed are aggregated (``memorization_by_size``): means with 95% t intervals over
seeds; a T(N, tau) mean is given only when every seed reached tau (``T_epochs_<tau>_n`` counts those that did).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.rundir.runs import IDENTITY_COLUMNS
from memdyn.studies import Options, read_csv, register

DEFAULT_TAUS = (0.5, 0.7, 0.9)
M_FROM = ("auto", "train_eval", "in_step")
EPOCH_COLUMNS = ["epoch", "exact_match", "num_tokens", "num_examples", "num_steps", "complete", "m_from"]
OUTPUTS = (
    "memorization_summary.csv/.md (per run), memorization_by_size.csv/.md (means and 95% CIs over seeds), "
    "memorization_epochs.csv, memorization.png, t_tau.png"
)


def tau_label(tau: float) -> str:
    return f"{float(tau):g}"


def steps_per_epoch(train_frame: pd.DataFrame) -> int:
    """Steps per epoch from ``train.csv`` rows: round((step + 1) / epochs_done) of the last row."""
    last = train_frame.sort_values("step", kind="stable").iloc[-1]
    return int(round((float(last["step"]) + 1) / float(last["epochs_done"])))


def per_epoch_memorization(records: pd.DataFrame, spe: int) -> pd.DataFrame:
    """In-step ``M_e`` from per-example records (``step, exact_match, num_tokens``) given steps per epoch.

    Columns: ``epoch`` (epochs completed before the sweep: records of steps ``[e*spe, (e+1)*spe)``),
    ``exact_match`` (token-weighted mean), ``num_tokens``, ``num_examples`` (records), ``num_steps`` (distinct
    steps recorded), ``complete`` and ``m_from`` = ``in_step``.
    """
    frame = records.assign(
        epoch=records["step"].to_numpy() // spe,
        correct=records["exact_match"].to_numpy(float) * records["num_tokens"].to_numpy(float),
    )
    grouped = frame.groupby("epoch", sort=True)
    out = pd.DataFrame(
        {
            "num_tokens": grouped["num_tokens"].sum().astype(np.int64),
            "correct": grouped["correct"].sum(),
            "num_examples": grouped.size(),
            "num_steps": grouped["step"].nunique(),
        }
    ).reset_index()
    tokens = out["num_tokens"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["exact_match"] = np.where(tokens > 0, out["correct"].to_numpy() / tokens, np.nan)
    out["complete"] = out["num_steps"] == spe
    out["m_from"] = "in_step"
    return out[EPOCH_COLUMNS]


def train_eval_memorization(evals: pd.DataFrame, spe: int) -> pd.DataFrame:
    """``M_e`` from whole-training-set evaluations (``eval.csv`` rows with ``set == "train"``) at epoch ends.

    Same columns as ``per_epoch_memorization`` (``num_steps`` NaN, ``complete`` True, ``m_from`` =
    ``train_eval``); empty when the run never evaluated the training set at an epoch end.
    """
    if evals.empty or "set" not in evals.columns:
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    rows = evals[(evals["set"] == "train") & (evals["step"] % spe == 0)]
    if rows.empty:
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    rows = rows.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    return pd.DataFrame(
        {
            "epoch": (rows["step"] // spe).astype(np.int64).to_numpy(),
            "exact_match": rows["exact_match"].astype(float).to_numpy(),
            "num_tokens": rows["num_tokens"].astype(np.int64).to_numpy(),
            "num_examples": rows["num_examples"].astype(np.int64).to_numpy(),
            "num_steps": math.nan,
            "complete": True,
            "m_from": "train_eval",
        }
    )[EPOCH_COLUMNS]


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
    train = read_csv(os.path.join(workdir, "train.csv"))
    if train.empty:
        raise ValueError(f"{workdir}: train.csv has no rows")
    return train.sort_values("step", kind="stable", ignore_index=True)


def _load_records(workdir: str) -> pd.DataFrame:
    from memdyn.train.writers import read_examples

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


def _epoch_frame(workdir: str, train: pd.DataFrame, m_from: str = "auto") -> pd.DataFrame:
    if m_from not in M_FROM:
        raise ValueError(f"m_from={m_from!r}: expected one of {M_FROM}")
    spe = steps_per_epoch(train)
    frame = pd.DataFrame(columns=EPOCH_COLUMNS)
    if m_from != "in_step":
        frame = train_eval_memorization(read_csv(os.path.join(workdir, "eval.csv")), spe)
        if frame.empty and m_from == "train_eval":
            raise ValueError(
                f"{workdir}: eval.csv has no evaluation of the training set at an epoch end (train "
                "with config.eval.epoch_sets holding 'train'), or use the in-step estimate"
            )
    if frame.empty:
        frame = per_epoch_memorization(_load_records(workdir), spe)
    for column, value in _identity(workdir, train).items():
        frame[column] = value
    return frame


def epoch_memorization(workdir: str, m_from: str = "auto") -> pd.DataFrame:
    """``M_e`` per epoch of the run in ``workdir`` (see the module docstring), with identity columns.

    ``m_from``: ``train_eval``, ``in_step``, or ``auto`` (the training-set evaluations when the run has them).
    Raises FileNotFoundError naming a missing ``train.csv`` or ``examples/``; ValueError naming the workdir
    when it has no train rows or no per-example records.
    """
    return _epoch_frame(workdir, _load_train(workdir), m_from)


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


def _memorization_before(epoch_frame: pd.DataFrame, overfit_epoch: float) -> tuple[float, float]:
    """(``M_e``, e) of the last complete epoch with ``epoch <= overfit_epoch``."""
    if not np.isfinite(overfit_epoch):
        return math.nan, math.nan
    done = epoch_frame[(epoch_frame["epoch"] <= overfit_epoch + 1e-9) & epoch_frame["complete"].astype(bool)]
    if not len(done):
        return math.nan, math.nan
    last = done.sort_values("epoch").iloc[-1]
    return float(last["exact_match"]), float(last["epoch"])


def _validation_m(evals: pd.DataFrame, step: float) -> float:
    """M(f) of the validation set evaluated at ``step`` (NaN when it was not evaluated there)."""
    if evals.empty or not np.isfinite(step):
        return math.nan
    rows = evals[(evals["set"] == "validation") & (evals["step"] == int(round(step)))]
    if "at_insertion" in rows:
        rows = rows[rows["at_insertion"].isna() | (rows["at_insertion"].astype(str) == "")]
    return float(rows["exact_match"].iloc[-1]) if len(rows) else math.nan


def summarize_run(workdir: str, taus=DEFAULT_TAUS, window: int = 5, m_from: str = "auto") -> tuple[pd.DataFrame, dict]:
    """One run's epoch frame and summary row (see ``analyze_runs``)."""
    train = _load_train(workdir)
    evals = read_csv(os.path.join(workdir, "eval.csv"))
    epochs = _epoch_frame(workdir, train, m_from)
    spe = steps_per_epoch(train)
    complete = epochs[epochs["complete"].astype(bool)].sort_values("epoch")
    overfit = overfitting_point(evals, spe)
    row = {column: epochs[column].iloc[0] for column in IDENTITY_COLUMNS}
    row.update(
        m_from=epochs["m_from"].iloc[0],
        steps_per_epoch=spe,
        epochs_trained=float(train["epochs_done"].iloc[-1]),
        final_epoch=int(complete["epoch"].iloc[-1]) if len(complete) else math.nan,
        final_m=float(complete["exact_match"].iloc[-1]) if len(complete) else math.nan,
    )
    row.update({f"T_epochs_{tau_label(t)}": v for t, v in t_epochs(epochs, taus).items()})
    row.update({f"T_updates_{tau_label(t)}": v for t, v in t_updates(train, taus, window).items()})
    m_before, epoch_before = _memorization_before(epochs, overfit["overfit_epoch"])
    row.update(overfit, m_before_overfit=m_before)
    # The generalization gap: M of the training set minus M of validation data, evaluated after the same epoch.
    row["gap_before_overfit"] = m_before - _validation_m(evals, epoch_before * spe)
    row["final_gap"] = row["final_m"] - _validation_m(evals, row["final_epoch"] * spe)
    return epochs, row


@register(
    "memorization",
    help="M(f) after each epoch, T(N, tau) in epochs and updates for tau in 0.5/0.7/0.9, "
    "the overfitting point and M(f) there, per run and over seeds with 95% CIs",
    outputs=OUTPUTS,
)
def run(options: Options) -> pd.DataFrame:
    return analyze_runs(
        options.workdirs, taus=options.taus or DEFAULT_TAUS, out_dir=options.out_dir, m_from=options.m_from or "auto"
    )


CONDITION = ["size", "params", "causal", "peak_lr", "batch_size", "seq_len"]  # what seeds of one condition share


def by_size(summary: pd.DataFrame, taus=DEFAULT_TAUS) -> pd.DataFrame:
    """Means and 95% t intervals over seeds per condition (``CONDITION`` columns), sorted by parameters."""
    from memdyn.studies import stats

    if summary.empty:
        return pd.DataFrame()
    t_columns = [f"T_epochs_{tau_label(t)}" for t in taus]
    plain = stats.over_seeds(
        summary, CONDITION, ["final_m", "overfit_epoch", "m_before_overfit", "gap_before_overfit", "final_gap"]
    )
    reached = stats.over_seeds(summary, CONDITION, t_columns, require_all=True)
    table = plain.merge(reached.drop(columns="n_seeds"), on=CONDITION)
    return table.sort_values(["params", "causal", "peak_lr"], kind="stable", ignore_index=True)


def analyze_runs(
    workdirs: list[str], taus=DEFAULT_TAUS, window: int = 5, out_dir: str | None = None, m_from: str = "auto"
) -> pd.DataFrame:
    """Summary with one row per run: identity columns, ``m_from``, ``steps_per_epoch``, ``epochs_trained``
    (final epochs_done), ``final_epoch`` and ``final_m`` (the last complete epoch's M), ``T_epochs_<tau>``,
    ``T_updates_<tau>``, ``overfit_step``, ``overfit_epoch`` and ``m_before_overfit``.

    With ``out_dir``: memorization_summary.csv/.md, memorization_by_size.csv/.md (``by_size``),
    memorization_epochs.csv (all runs' epoch frames), memorization.png (M_e vs epochs, mean and 95% CI band over
    seeds per size) and t_tau.png (T(N, tau) vs params with 95% CIs), each written atomically.
    """
    loaded = [summarize_run(w, taus, window, m_from) for w in workdirs]
    summary = pd.DataFrame([row for _, row in loaded])
    if len(summary):  # by size, not by directory name (which sorts "micro" before "nano")
        summary = summary.sort_values(["params", "causal", "peak_lr", "seed"], kind="stable", ignore_index=True)
    if out_dir is not None:
        epochs = pd.concat([e for e, _ in loaded], ignore_index=True) if loaded else pd.DataFrame()
        table = by_size(summary, taus)
        os.makedirs(out_dir, exist_ok=True)
        join = lambda name: os.path.join(out_dir, name)  # noqa: E731
        runs.atomic_write(join("memorization_summary.csv"), lambda p: summary.to_csv(p, index=False))
        runs.atomic_write(join("memorization_by_size.csv"), lambda p: table.to_csv(p, index=False))
        runs.atomic_write(join("memorization_epochs.csv"), lambda p: epochs.to_csv(p, index=False))
        runs.atomic_write_text(join("memorization_summary.md"), _markdown(summary) + "\n")
        runs.atomic_write_text(join("memorization_by_size.md"), _ci_markdown(table, taus) + "\n")
        runs.atomic_write(join("memorization.png"), lambda p: _plot_epochs(epochs, summary, p))
        runs.atomic_write(join("t_tau.png"), lambda p: _plot_t_tau(table, taus, p))
    return summary


def _ci_markdown(table: pd.DataFrame, taus) -> str:
    """The by-size table as markdown: ``mean [95% CI]`` cells, T(N, tau) as ``reached/seeds`` when not all did."""
    from memdyn.studies.stats import format_ci
    from memdyn.studies.tables import to_markdown

    if table.empty:
        return ""
    cell = lambda row, c, d=3: format_ci(row[f"{c}_mean"], row[f"{c}_ci_low"], row[f"{c}_ci_high"], d)  # noqa
    rows = []
    for _, row in table.iterrows():
        out = {"size": row["size"], "params": int(row["params"]), "seeds": int(row["n_seeds"])}
        if table["causal"].nunique() > 1:
            out["causal"] = row["causal"]
        if table["peak_lr"].nunique() > 1:
            out["peak_lr"] = row["peak_lr"]
        out["final M"] = cell(row, "final_m")
        for tau in taus:
            c = f"T_epochs_{tau_label(tau)}"
            reached = int(row[f"{c}_n"])
            out[f"T(N, {tau_label(tau)})"] = (
                cell(row, c, 1) if reached == row["n_seeds"] else f"reached by {reached}/{int(row['n_seeds'])}"
            )
        out["overfit epoch"] = cell(row, "overfit_epoch", 1)
        out["M before overfitting"] = cell(row, "m_before_overfit")
        rows.append(out)
    return to_markdown(pd.DataFrame(rows))


def _markdown(summary: pd.DataFrame) -> str:
    from memdyn.studies.tables import to_markdown

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


LINESTYLES = ("-", "--", ":", "-.")  # one per objective / learning-rate variant


def _plot_epochs(epochs: pd.DataFrame, summary: pd.DataFrame, png_path: str) -> None:
    """M_e of complete epochs against epochs completed: per size the mean over seeds, its 95% t band, and each
    seed as a thin line."""
    from memdyn.studies.stats import t_interval

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    if len(summary):
        colours = _size_colours(summary, plt)
        done = epochs[epochs["complete"].astype(bool)]
        # A size run at several rates (or objectives) gets one curve per rate, not one over all its runs.
        split = [c for c in ("peak_lr", "causal") if c in done and (done.groupby("size")[c].nunique() > 1).any()]
        for size, colour in colours.items():
            for v, (key, part) in enumerate(done[done["size"] == size].groupby(split or (lambda _: 0))):
                for _, run in part.groupby("workdir" if "workdir" in part else "run"):
                    ax.plot(
                        run["epoch"],
                        run["exact_match"],
                        color=colour,
                        lw=0.5,
                        alpha=0.35,
                        ls=LINESTYLES[v % len(LINESTYLES)],
                    )
                stats = [(e, *t_interval(g["exact_match"])) for e, g in part.groupby("epoch")]
                e, mean, low, high, n = (np.array(v) for v in zip(*stats))
                seeds = int(n.max())
                key = key if isinstance(key, tuple) else (key,)
                variant = "".join(f", {c}={k:g}" if c == "peak_lr" else f", {c}={k}" for c, k in zip(split, key))
                ax.plot(
                    e,
                    mean,
                    color=colour,
                    lw=1.6,
                    ls=LINESTYLES[v % len(LINESTYLES)],
                    label=f"{size}{variant} ({seeds} seed{'s' * (seeds > 1)})",
                )
                ax.fill_between(e, low, high, color=colour, alpha=0.25, lw=0)
        ax.legend(fontsize=7, title="size", title_fontsize=7)
    source = ", ".join(sorted(set(summary["m_from"]))) if len(summary) else ""
    ax.set(
        xlabel="epochs completed",
        ylabel="exact memorization $M_e$ of the training set",
        ylim=(0, 1),
        title=f"M(f) after each epoch (mean, 95% CI over seeds; {source})",
    )
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)


def _plot_t_tau(table: pd.DataFrame, taus, png_path: str, split_by=("causal", "peak_lr")) -> None:
    """T(N, tau) in epochs against params (log x): per tau the mean over seeds with its 95% t interval, drawn
    only where every seed reached tau."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    # Runs differing in objective or learning rate are separate lines, not seeds of one point (``split_by``; the
    # learning-rate analysis draws one line through the sizes at their chosen rates).
    variants = [c for c in split_by if len(table) and table[c].nunique() > 1]
    groups = table.groupby(variants, dropna=False) if variants else [((), table)]
    plotted = False
    for g, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        suffix = ", ".join(f"{c}={v}" for c, v in zip(variants, key))
        for i, tau in enumerate(taus):
            c = f"T_epochs_{tau_label(tau)}"
            points = part.dropna(subset=[f"{c}_mean"]).sort_values("params")
            if points.empty:
                continue
            low = (points[f"{c}_mean"] - points[f"{c}_ci_low"]).fillna(0)
            high = (points[f"{c}_ci_high"] - points[f"{c}_mean"]).fillna(0)
            label = f"τ={tau_label(tau)}" + (f" ({suffix})" if suffix else "")
            ax.errorbar(
                points["params"],
                points[f"{c}_mean"],
                yerr=[low, high],
                color=f"C{i % 10}",
                ls=LINESTYLES[g % len(LINESTYLES)],
                marker="o",
                ms=4,
                capsize=3,
                label=label,
            )
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no size reached any τ in every seed", transform=ax.transAxes, ha="center", va="center")
    ax.set_xscale("log")
    ax.set(
        xlabel="parameters N",
        ylabel="T(N, τ) [epochs]",
        title="epochs until M ≥ τ (mean, 95% CI over seeds;\nsizes where a seed never got there are left out)",
    )
    if plotted:
        ax.legend(fontsize=7)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
