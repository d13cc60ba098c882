"""Markdown tables of result frames (for RESULTS.md files), without extra dependencies."""

from __future__ import annotations

import math

import pandas as pd


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
