"""Result files of a run: the train CSV, per-example records (Parquet parts) and TensorBoard via clu.

CSV rows are appended as whole lines and flushed; per-example parts are written to a hidden temporary file and
renamed, so a reader never sees half a part. ``read_examples`` loads every part into one pandas DataFrame.

With several JAX processes only process 0 writes; the others build their writers with ``write=False``, which keep
the same row counts and part names (saved in checkpoints) without touching a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

import numpy as np


class CsvWriter:
    """Appends rows with fixed columns to a CSV file (header written once); ``rows`` counts the data rows.

    ``rows``: the rows already in the file (default: counted); ``write=False`` only counts.
    """

    def __init__(self, path: str, columns: Sequence[str], rows: int | None = None, write: bool = True):
        self.path = path
        self.columns = list(columns)
        self.rows = count_csv_rows(path) if rows is None else rows
        self._file = None
        if write:
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            self._file = open(path, "a", newline="")
            if new:
                self._write_lines([self.columns])

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if self._file is not None:
            self._write_lines([[_fmt(row.get(c)) for c in self.columns] for row in rows])
        self.rows += len(rows)

    def _write_lines(self, rows: list[list[Any]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._file.write(buffer.getvalue())
        self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def count_csv_rows(path: str) -> int:
    """Data rows of a CSV written by CsvWriter (0 when absent); a torn last line does not count."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().split("\n")
    return max(len(lines) - 2, 0)  # header, and the empty string after the final newline (or a torn line)


def truncate_csv(path: str, num_rows: int) -> None:
    """Keeps the header and the first ``num_rows`` rows (atomic rewrite); drops rows written after a checkpoint."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().split("\n")
    kept = lines[:1 + num_rows]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(kept) + "\n")
    os.replace(tmp, path)


def _fmt(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return value if value is not None else ""


class ExampleRecordWriter:
    """Per-example records as Parquet parts of a directory; each ``add`` is one step's columns of equal length.

    ``parts``: the parts to keep (a checkpoint's); any other part in the directory is deleted (written after that
    checkpoint); None keeps all. ``write=False`` names parts as a writer would but writes and deletes nothing.
    """

    def __init__(self, directory: str, parts: Sequence[str] | None = None, write: bool = True,
                 flush_every: int = 200):
        self.directory = directory
        self.flush_every = flush_every
        self._write_files = write
        if parts is None:  # keep every part already there
            parts = _list_parts(directory) if write and os.path.isdir(directory) else []
        self._parts = sorted(parts)  # kept in memory rather than listed: every process names the same parts
        self._buffer: list[dict[str, np.ndarray]] = []
        if write:
            os.makedirs(directory, exist_ok=True)
            for name in set(_list_parts(directory)) - set(self._parts):
                os.remove(os.path.join(directory, name))

    def add(self, step: int, **columns: np.ndarray) -> None:
        n = len(next(iter(columns.values())))
        self._buffer.append({"step": np.full(n, step, np.int32), **{k: np.asarray(v) for k, v in columns.items()}})
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq
        columns = {c: np.concatenate([b[c] for b in self._buffer]) for c in self._buffer[0]}
        first, last = int(columns["step"][0]), int(columns["step"][-1])
        index = len(self._parts)  # parts of one step range stay distinct (evaluations after an insertion)
        name = f"part-{first:09d}-{last:09d}-{index:05d}.parquet"
        if self._write_files:
            tmp = os.path.join(self.directory, f".tmp-{name}")
            pq.write_table(pa.table(columns), tmp)
            os.replace(tmp, os.path.join(self.directory, name))
        self._parts = sorted(self._parts + [name])
        self._buffer = []

    def parts(self) -> list[str]:
        """The parts written (or, with ``write=False``, named) so far, kept ones included."""
        return list(self._parts)

    def close(self) -> None:
        self.flush()


def read_examples(directory: str):
    """All per-example records of a run as a pandas DataFrame sorted by (step, example_id)."""
    import pandas as pd
    parts = _list_parts(directory)
    if not parts:
        raise FileNotFoundError(f"no per-example records in {directory!r}")
    frame = pd.concat([pd.read_parquet(os.path.join(directory, p)) for p in parts], ignore_index=True)
    keys = [k for k in ("step", "set", "example_id") if k in frame.columns]
    return frame.sort_values(keys, ignore_index=True, kind="stable")


def _list_parts(directory: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f.startswith("part-") and f.endswith(".parquet"))


class TensorBoardWriter:
    """clu's asynchronous TensorBoard writer, imported on first use (it pulls in TensorFlow); ``write=False``
    writes nothing."""

    def __init__(self, logdir: str, write: bool = True):
        self._writer = None
        if write:
            from clu import metric_writers
            self._writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            self._writer.write_scalars(step, scalars)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
