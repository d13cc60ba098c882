"""The result-file writers of a run, on clu's ``MetricWriter`` interface: CSV tables, Parquet per-example records
and TensorBoard events.

- ``CsvWriter.write_scalars(step, row)`` appends one row (``step`` plus the row's columns; strings allowed, for
  identity columns) as a whole line, flushed. Rows already in the file can be cut back to a count (a checkpoint's).
- ``RecordWriter.write_summaries(step, columns)`` buffers one step's per-example columns (arrays of equal length)
  and writes them as Parquet parts, each to a hidden temporary file renamed into place, so a reader never sees
  half a part. Parts not named by a checkpoint are deleted when the writer opens.
- ``tensorboard_writer`` is clu's asynchronous TensorBoard writer.
The methods a writer cannot serve raise NotImplementedError. ``write=False`` builds a writer that counts rows and
names parts like a real one but touches no file: with several JAX processes only process 0 writes.
``read_examples`` loads every part of a record directory into one pandas DataFrame.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from clu import metric_writers

import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
from memdyn.rundir import runs
from memdyn.rundir.records import list_parts, read_examples  # noqa: F401 (read_examples: re-exported)


class _ResultWriter(metric_writers.MetricWriter):
    """A MetricWriter for one kind of write; the others are refused."""

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not write this kind of summary")

    write_scalars = write_summaries = write_images = write_videos = write_audios = _refuse
    write_texts = write_histograms = write_hparams = _refuse

    def flush(self) -> None:
        pass


class CsvWriter(_ResultWriter):
    """Appends rows with fixed columns to a CSV file (header written once); ``rows`` counts the data rows.

    ``rows``: the rows the file should keep (a checkpoint's); rows after them are cut off. None keeps the file.
    """

    def __init__(self, path: str, columns: Sequence[str], rows: int | None = None, write: bool = True):
        self.path, self.columns = path, list(columns)
        self._file = None
        if write and rows is not None:
            truncate_csv(path, rows)
        self.rows = count_csv_rows(path) if rows is None else rows
        if write:
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            self._file = open(path, "a", newline="")
            if new:
                self._write_lines([self.columns])

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": step, **scalars}
        if self._file is not None:
            self._write_lines([[_fmt(row.get(c)) for c in self.columns]])
        self.rows += 1

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
        self._file = None


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
    runs.atomic_write_text(path, "\n".join(lines[: 1 + num_rows]) + "\n")


def _fmt(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return value if value is not None else ""


class RecordWriter(_ResultWriter):
    """Per-example records as Parquet parts of a directory; each ``write_summaries`` is one step's columns.

    ``parts``: the parts to keep (a checkpoint's); any other part in the directory is deleted (written after that
    checkpoint); None keeps all.
    """

    def __init__(self, directory: str, parts: Sequence[str] | None = None, write: bool = True, flush_every: int = 200):
        self.directory = directory
        self.flush_every = flush_every
        self._write_files = write
        if parts is None:  # keep every part already there
            parts = list_parts(directory) if write and os.path.isdir(directory) else []
        self._parts = sorted(parts)  # kept in memory rather than listed: every process names the same parts
        self._buffer: list[dict[str, np.ndarray]] = []
        if write:
            os.makedirs(directory, exist_ok=True)
            for name in set(list_parts(directory)) - set(self._parts):
                os.remove(os.path.join(directory, name))

    def write_summaries(
        self, step: int, values: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None
    ) -> None:
        n = len(next(iter(values.values())))
        self._buffer.append({"step": np.full(n, step, np.int32), **{k: np.asarray(v) for k, v in values.items()}})
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
            runs.atomic_write(os.path.join(self.directory, name), lambda tmp: pq.write_table(pa.table(columns), tmp))
        self._parts = sorted(self._parts + [name])
        self._buffer = []

    def parts(self) -> list[str]:
        """The parts written (or, with ``write=False``, named) so far, kept ones included."""
        return list(self._parts)

    def close(self) -> None:
        self.flush()


def tensorboard_writer(logdir: str, write: bool = True) -> metric_writers.MetricWriter:
    """clu's asynchronous TensorBoard writer (it imports TensorFlow), or one that writes nothing."""
    if not write:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))
