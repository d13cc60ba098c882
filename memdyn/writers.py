"""Result files of a run: the train CSV, per-example records (Parquet parts) and TensorBoard via clu.

CSV rows are appended as whole lines and flushed; per-example parts are written to a hidden temporary file and
renamed, so a reader never sees half a part. ``read_examples`` loads every part into one pandas DataFrame.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

import numpy as np


class CsvWriter:
    """Appends rows with fixed columns to a CSV file (header written once)."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="")
        if new:
            self._write_lines([self.columns])

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._write_lines([[_fmt(row.get(c)) for c in self.columns] for row in rows])

    def _write_lines(self, rows: list[list[Any]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._file.write(buffer.getvalue())
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return value if value is not None else ""


class ExampleRecordWriter:
    """Per-example records (step, example_id, exact_match, loss, num_tokens) as Parquet parts of a directory."""

    COLUMNS = ("step", "example_id", "exact_match", "loss", "num_tokens")

    def __init__(self, directory: str, flush_every: int = 200):
        self.directory = directory
        self.flush_every = flush_every
        os.makedirs(directory, exist_ok=True)
        self._buffer: list[dict[str, np.ndarray]] = []

    def add(self, step: int, example_ids_B: np.ndarray, exact_match_B: np.ndarray, loss_B: np.ndarray,
            num_tokens_B: np.ndarray) -> None:
        self._buffer.append({
            "step": np.full(len(example_ids_B), step, np.int32), "example_id": example_ids_B.astype(np.int64),
            "exact_match": exact_match_B.astype(np.float32), "loss": loss_B.astype(np.float32),
            "num_tokens": num_tokens_B.astype(np.int32)})
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq
        columns = {c: np.concatenate([b[c] for b in self._buffer]) for c in self.COLUMNS}
        first, last = int(columns["step"][0]), int(columns["step"][-1])
        final = os.path.join(self.directory, f"part-{first:09d}-{last:09d}.parquet")
        tmp = os.path.join(self.directory, f".tmp-part-{first:09d}.parquet")
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, final)
        self._buffer = []

    def close(self) -> None:
        self.flush()


def read_examples(directory: str):
    """All per-example records of a run as a pandas DataFrame sorted by (step, example_id)."""
    import pandas as pd
    parts = sorted(f for f in os.listdir(directory) if f.startswith("part-") and f.endswith(".parquet"))
    if not parts:
        return pd.DataFrame({c: [] for c in ExampleRecordWriter.COLUMNS})
    frame = pd.concat([pd.read_parquet(os.path.join(directory, p)) for p in parts], ignore_index=True)
    return frame.sort_values(["step", "example_id"], ignore_index=True)


class TensorBoardWriter:
    """clu's asynchronous TensorBoard writer, imported on first use (it pulls in TensorFlow)."""

    def __init__(self, logdir: str):
        from clu import metric_writers
        self._writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._writer.write_scalars(step, scalars)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
