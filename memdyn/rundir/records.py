"""Reading a run's per-example records (``examples/``, ``eval_examples/``: Parquet parts written by
``memdyn.train.writers.RecordWriter``) with pandas; no JAX, so analyses and exports run anywhere."""

from __future__ import annotations

import os


def list_parts(directory: str) -> list[str]:
    """The record parts of ``directory`` (``part-*.parquet``), in the order they were written."""
    return sorted(f for f in os.listdir(directory) if f.startswith("part-") and f.endswith(".parquet"))


def read_examples(directory: str):
    """All per-example records of a run as a pandas DataFrame sorted by (step, example_id)."""
    import pandas as pd

    parts = list_parts(directory)
    if not parts:
        raise FileNotFoundError(f"no per-example records in {directory!r}")
    frame = pd.concat([pd.read_parquet(os.path.join(directory, p)) for p in parts], ignore_index=True)
    keys = [k for k in ("step", "set", "example_id") if k in frame.columns]
    return frame.sort_values(keys, ignore_index=True, kind="stable")
