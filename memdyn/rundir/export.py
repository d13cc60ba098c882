"""Tidy CSV exports of a run or of a whole sweep, for pandas, R or a spreadsheet.

A run's files: ``train.csv``, ``eval.csv``, ``insertions.csv`` (copies) and ``examples.csv``, ``eval_examples.csv``
(its per-example Parquet records as CSV). A sweep's files are the same five, each the concatenation over every run
below the sweep directory, with a ``run`` column and one column per swept field — ``load(path)`` reads the sweep:

    frame = export.load("exports/train.csv")
    frame.groupby(["size", "seed"]).loss.min()
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pandas as pd

from memdyn.rundir import records
from memdyn.rundir import runs as runs_lib

CSV_FILES = ("train.csv", "eval.csv", "insertions.csv")
RECORD_FILES = {"examples.csv": "examples", "eval_examples.csv": "eval_examples"}  # file -> Parquet part dir
FILES = CSV_FILES + tuple(RECORD_FILES)


def load(path: str) -> pd.DataFrame:
    """One exported file (of a run or a sweep) as a DataFrame."""
    return pd.read_csv(path)


# -- one run ---------------------------------------------------------------------------------------------------
def _parts(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, f) for f in os.listdir(directory) if f.startswith("part-") and f.endswith(".parquet")
    )


def read_file(workdir: str, name: str) -> pd.DataFrame | None:
    """A run's file ``name`` (one of FILES) as a DataFrame; None when the run has none."""
    if name in RECORD_FILES:
        directory = os.path.join(workdir, RECORD_FILES[name])
        return records.read_examples(directory) if _parts(directory) else None
    path = os.path.join(workdir, name)
    return pd.read_csv(path) if _columns(workdir, name) is not None else None


def _columns(workdir: str, name: str) -> list[str] | None:
    """The columns of a run's file without reading its rows; None when the run has none."""
    if name in RECORD_FILES:
        import pyarrow.parquet as pq

        names = [n for part in _parts(os.path.join(workdir, RECORD_FILES[name])) for n in pq.read_schema(part).names]
        return list(dict.fromkeys(names)) or None
    path = os.path.join(workdir, name)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    return list(pd.read_csv(path, nrows=0).columns)


def export_run(workdir: str, out_dir: str) -> dict[str, str]:
    """Writes the run's tidy CSVs into ``out_dir``; returns {file name: path} of those written."""
    runs_lib.load_config(workdir)  # a clear error when workdir holds no run
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for name in CSV_FILES:
        source = os.path.join(workdir, name)
        if os.path.isfile(source):
            written[name] = runs_lib.atomic_write(
                os.path.join(out_dir, name), lambda tmp, source=source: shutil.copyfile(source, tmp)
            )
    for name in RECORD_FILES:
        frame = read_file(workdir, name)
        if frame is not None:
            written[name] = runs_lib.atomic_write(
                os.path.join(out_dir, name), lambda tmp, frame=frame: frame.to_csv(tmp, index=False)
            )
    return written


# -- a sweep ---------------------------------------------------------------------------------------------------
def _frames(runs, name: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    """Each run's ``name`` with its run label and overrides as columns (a column the file has stays)."""
    for run in runs:
        frame = read_file(run.workdir, name)
        if frame is None:
            continue
        frame["run"] = run.label
        for key, value in run.overrides.items():
            if key not in frame.columns:
                frame[key] = value
        yield frame.reindex(columns=columns)


def _concatenate(runs, name: str, keys: list[str], path: str) -> bool:
    """Streams every run's ``name`` into one CSV at ``path`` (one run in memory at a time); False if none has it."""
    found = [c for run in runs for c in (_columns(run.workdir, name) or [])]
    if not found:
        return False
    columns = list(dict.fromkeys(["run", *keys, *found]))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            for i, frame in enumerate(_frames(runs, name, columns)):
                frame.to_csv(f, header=i == 0, index=False)

    runs_lib.atomic_write(path, write)
    return True


def export_sweep(sweep_dir: str, out_dir: str) -> dict[str, str]:
    """Writes each file kind concatenated over all runs below ``sweep_dir`` into ``out_dir``; {file name: path}.

    Columns: ``run`` (the run's directory relative to ``sweep_dir``), the swept fields (from sweep.json, else
    parsed from the run directory's name), then the file's own columns (identity columns such as size, params,
    seed, peak_lr included).
    """
    runs = runs_lib.require_runs(sweep_dir)
    os.makedirs(out_dir, exist_ok=True)
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    written = {}
    for name in FILES:
        path = os.path.join(out_dir, name)
        if _concatenate(runs, name, keys, path):
            written[name] = path
    return written
