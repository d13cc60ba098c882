"""The measures of ``memdyn analyze memorization`` on a run's frames (defined in ``analysis``'s docstring): M_e per
epoch from per-example records or training-set evaluations, T(N, tau), T_update(N, tau), the overfitting point
and M(f) before it. Pure functions of pandas frames; nothing is read or written here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DEFAULT_TAUS = (0.5, 0.7, 0.9)
EPOCH_COLUMNS = ["epoch", "exact_match", "num_tokens", "num_examples", "num_steps", "complete", "m_from"]


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


def memorization_before(epoch_frame: pd.DataFrame, overfit_epoch: float) -> tuple[float, float]:
    """(``M_e``, e) of the last complete epoch with ``epoch <= overfit_epoch``."""
    if not np.isfinite(overfit_epoch):
        return math.nan, math.nan
    done = epoch_frame[(epoch_frame["epoch"] <= overfit_epoch + 1e-9) & epoch_frame["complete"].astype(bool)]
    if not len(done):
        return math.nan, math.nan
    last = done.sort_values("epoch").iloc[-1]
    return float(last["exact_match"]), float(last["epoch"])


def validation_m(evals: pd.DataFrame, step: float) -> float:
    """M(f) of the validation set evaluated at ``step`` (NaN when it was not evaluated there)."""
    if evals.empty or not np.isfinite(step):
        return math.nan
    rows = evals[(evals["set"] == "validation") & (evals["step"] == int(round(step)))]
    if "at_insertion" in rows:
        rows = rows[rows["at_insertion"].isna() | (rows["at_insertion"].astype(str) == "")]
    return float(rows["exact_match"].iloc[-1]) if len(rows) else math.nan
