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

The measures are computed in ``measures`` (pure functions of frames), the figures drawn in ``plots``; this
module reads the runs, builds the tables and writes them.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.rundir.runs import IDENTITY_COLUMNS
from memdyn.studies import Options, read_csv, register
from memdyn.studies.memorization import plots
from memdyn.studies.memorization.measures import (
    DEFAULT_TAUS,
    EPOCH_COLUMNS,
    memorization_before,
    overfitting_point,
    per_epoch_memorization,
    steps_per_epoch,
    t_epochs,
    t_updates,
    tau_label,
    train_eval_memorization,
    validation_m,
)

M_FROM = ("auto", "train_eval", "in_step")
OUTPUTS = (
    "memorization_summary.csv/.md (per run), memorization_by_size.csv/.md (means and 95% CIs over seeds), "
    "memorization_epochs.csv, memorization.png, t_tau.png"
)


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
    from memdyn.rundir.records import read_examples

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
    m_before, epoch_before = memorization_before(epochs, overfit["overfit_epoch"])
    row.update(overfit, m_before_overfit=m_before)
    # The generalization gap: M of the training set minus M of validation data, evaluated after the same epoch.
    row["gap_before_overfit"] = m_before - validation_m(evals, epoch_before * spe)
    row["final_gap"] = row["final_m"] - validation_m(evals, row["final_epoch"] * spe)
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
        runs.atomic_write(join("memorization.png"), lambda p: plots.plot_epochs(epochs, summary, p))
        runs.atomic_write(join("t_tau.png"), lambda p: plots.plot_t_tau(table, taus, p))
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
