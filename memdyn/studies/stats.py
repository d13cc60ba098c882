"""Seed aggregation: means with 95% confidence intervals, for every table and figure that compares conditions.

The interval is Student's t over seeds (mean ± t_{0.975, n-1} · s / sqrt(n)): the seeds of a condition are
independent runs, and with the 3–5 seeds a CPU study affords a bootstrap over seeds would understate the
width. One seed gives a mean and no interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, ci_low, ci_high, n) of the finite ``values``; NaN bounds for fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def over_seeds(frame: pd.DataFrame, by: list[str], columns: list[str], *, require_all: bool = False) -> pd.DataFrame:
    """One row per group of ``by``: ``n_seeds`` and, per column, ``<c>_mean``, ``<c>_ci_low``, ``<c>_ci_high``
    and ``<c>_n`` (seeds with a finite value).

    ``require_all``: a column's mean and interval are NaN unless every seed of the group has a value (for
    "epochs until M >= tau", where averaging only the seeds that got there would flatter the condition).
    """
    rows = []
    for key, group in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), n_seeds=len(group))
        for column in columns:
            mean, low, high, n = t_interval(group[column])
            if require_all and n < len(group):
                mean = low = high = math.nan
            row.update({f"{column}_mean": mean, f"{column}_ci_low": low, f"{column}_ci_high": high, f"{column}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def format_ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``mean [low, high]`` for markdown tables; empty for NaN, the mean alone without an interval."""
    if not np.isfinite(mean):
        return ""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
