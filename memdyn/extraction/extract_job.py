"""``memdyn extract``: k-extractability (Biderman et al. 2023) of every sequence of a token source at a checkpoint.

Per sequence (``example_id``): ``memorized`` and ``prefix_match`` (one teacher-forced pass), ``loss`` (the mean
cross-entropy of the continuation tokens in that pass) and, with ``score=True``, ``score`` (the fraction of the
continuation that greedy decoding reproduces; NaN without it). See ``memdyn.extraction.extractability``.

Results are written as they come: every chunk of ``chunk_batches`` batches goes atomically to
``<out>.parts/part-<k>.csv`` beside ``job.json`` (what was asked for). Run again with the same arguments, a job
continues after its last complete part; with other arguments it is refused with the differing fields named. At
the end the parts become ``<out>`` (``.csv`` or ``.parquet``) and ``<out>.json`` (the job and its totals).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
from typing import Any

import jax
import numpy as np
import pandas as pd
from absl import logging

from memdyn import config as config_lib
from memdyn.data import indexed as indexed_lib
from memdyn.data import run_data, token_sources
from memdyn.data.feeder import row_batches
from memdyn.data.order import PADDING_ROW
from memdyn.extraction import eval_checkpoint
from memdyn.extraction import extractability as extract
from memdyn.rundir import runs
from memdyn.train import steps as core

COLUMNS = ["example_id", "score", "memorized", "prefix_match", "loss"]
FORMATS = (".csv", ".parquet")


def default_out(workdir: str, spec: dict, step: int, set_names=()) -> str:
    """``<workdir>/extract/<source>-<step>.csv`` (``train-<step>.csv`` is the file ``memdyn analyze predict``
    reads for a run): ``<source>`` is the set's name, the ``--tokens`` file's stem (``tokens-<stem>`` when the
    stem is the name of one of the run's ``set_names`` or ``train``, not to pass for that set's file) or
    ``indexed-<name>-<a>_<b>``."""
    if "set" in spec:
        name = spec["set"]
    elif "tokens" in spec:
        name = os.path.splitext(os.path.basename(spec["tokens"]))[0]
        if name in {"train", *set_names}:
            name = "tokens-" + name
    else:
        name = f"indexed-{os.path.basename(spec['indexed'])}-{spec['rows'][0]}_{spec['rows'][1]}"
    return os.path.join(workdir, "extract", f"{name}-{step}.csv")


def run_extract(
    workdir: str,
    step: int | None = None,
    *,
    out: str | None = None,
    set_name: str | None = None,
    tokens: str | None = None,
    indexed: str | None = None,
    rows: str | None = None,
    steps: str | None = None,
    rows_per_step: int = indexed_lib.ROWS_PER_STEP,
    prompt_len: int = 32,
    num_new: int = 32,
    score: bool = False,
    batch_size: int | None = None,
    chunk_batches: int = 16,
) -> dict[str, Any]:
    """Scores the source at checkpoint ``step`` (None: the latest); returns the job's totals."""
    config = runs.load_config(workdir)
    if not config.model.causal:
        raise ValueError("memdyn extract needs a causal LM; this run trains a masked LM (config.model.causal=False)")
    if prompt_len < 1 or num_new < 1:
        raise ValueError(f"--prompt_len={prompt_len} and --num_new={num_new} must be positive")
    length = prompt_len + num_new
    if length > config.model.max_len:
        raise ValueError(
            f"--prompt_len + --num_new = {length} is longer than the model's positions "
            f"(config.model.max_len={config.model.max_len})"
        )
    batch_size = batch_size or config_lib.eval_batch_size(config)
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"--batch_size={batch_size} and the chunk of {chunk_batches} batches must be positive")
    if config.memsinks.method != "none" and not set_name:
        raise ValueError(
            "a MemSinks run scores with each sequence's sink mask, keyed by a hash of the whole stored "
            "row: score its own sets (--set); --tokens/--indexed rows have no such ids"
        )
    data = run_data.open_run_data(workdir, config)
    source = token_sources.open_source(
        data,
        length=length,
        vocab_size=config.model.vocab_size,
        set_name=set_name,
        tokens=tokens,
        indexed=indexed,
        rows=rows,
        steps=steps,
        rows_per_step=rows_per_step,
    )
    if not len(source.row_indices):
        raise ValueError(
            f"{_source_name(source.spec)}: no sequence to score ({source.left_out} shorter than prompt_len + "
            f"num_new = {length} left out)"
        )
    run = core.build_run(config, data)
    restored = eval_checkpoint.restore(run, workdir, step)
    out = out or default_out(workdir, source.spec, restored.step, set_names=data.evaluable())
    if not out.endswith(FORMATS):
        raise ValueError(f"--out={out!r}: expected a .csv or .parquet file")
    counters = restored.meta.get("counters", {})  # an imported checkpoint has none
    job = {
        "workdir": os.path.abspath(workdir),
        "step": int(restored.step),
        "source": source.spec,
        "prompt_len": prompt_len,
        "num_new": num_new,
        "score": bool(score),
        "batch_size": batch_size,
        "chunk_batches": chunk_batches,
        "sequences": int(len(source.row_indices)),
        "left_out": source.left_out,
        "tokens_seen": counters.get("tokens_seen"),
    }  # what the checkpoint trained on: D of compute 6·N·D
    done = _finished(out, job)
    if done is not None:
        logging.info("%s is complete already", out)
        return done
    parts_dir = out + ".parts"
    first = _resume_point(parts_dir, job)
    chunk_rows = batch_size * chunk_batches
    num_chunks = -(-len(source.row_indices) // chunk_rows)
    report = SequenceProgress(len(source.row_indices), done=min(first * chunk_rows, len(source.row_indices)))
    if first:
        logging.info("resuming %s after %d of %d chunks", out, first, num_chunks)
    with run.context():
        for k in range(first, num_chunks):
            chunk = source.row_indices[k * chunk_rows : (k + 1) * chunk_rows]
            frame = _score_chunk(run, restored.params, source.rows, chunk, batch_size, prompt_len, num_new, score)
            runs.atomic_write(
                os.path.join(parts_dir, f"part-{k:09d}.csv"), lambda tmp, frame=frame: frame.to_csv(tmp, index=False)
            )
            report(min((k + 1) * chunk_rows, len(source.row_indices)))
    parts = [path for _, path in sorted(_part_numbers(parts_dir).items())]
    frame = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    totals = {
        **job,
        "out": os.path.abspath(out),
        "scored": len(frame),
        "memorized_fraction": float(frame["memorized"].mean()) if len(frame) else float("nan"),
        "mean_score": float(frame["score"].mean()) if score and len(frame) else float("nan"),
        "mean_loss": float(frame["loss"].mean()) if len(frame) else float("nan"),
    }
    # The sidecar first: a job killed before <out> is written finds its parts and writes it again.
    runs.atomic_write_json(out + ".json", totals)
    if out.endswith(".parquet"):
        runs.atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        runs.atomic_write(out, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return totals


def _source_name(spec: dict) -> str:
    """The source as its flags name it."""
    if "set" in spec:
        return f"--set={spec['set']!r}"
    if "tokens" in spec:
        return f"--tokens={spec['tokens']!r}"
    return f"--indexed={spec['indexed']!r} rows {spec['rows'][0]}:{spec['rows'][1]}"


class SequenceProgress:
    """The progress of the scoring, logged every ``every_secs`` and at the end: sequences/s since the last line,
    the share of the source's sequences scored and the ETA (a resumed job counts from the ``done`` it found)."""

    def __init__(self, total: int, done: int = 0, every_secs: float = 5.0, clock=time.monotonic):
        self.total, self.every_secs, self.clock = total, every_secs, clock
        self._last = (done, clock())

    def __call__(self, done: int) -> str | None:
        """``done`` sequences scored; returns the line logged, if any."""
        now = self.clock()
        last_done, last_time = self._last
        if done < self.total and now - last_time < self.every_secs:
            return None
        rate = (done - last_done) / max(now - last_time, 1e-9)
        eta = _format_secs((self.total - done) / rate) if rate > 0 else "unknown"
        line = (
            f"scored {done:,} of {self.total:,} sequences ({100 * done / max(self.total, 1):.1f}%), "
            f"{rate:,.1f} sequences/s, ETA {eta}"
        )
        logging.info("%s", line)
        self._last = (done, now)
        return line


def _format_secs(secs: float) -> str:
    hours, rest = divmod(int(round(secs)), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _score_chunk(
    run: core.Run, params, rows, chunk: np.ndarray, batch_size: int, prompt_len: int, num_new: int, score: bool
) -> pd.DataFrame:
    """One row per sequence of ``chunk`` (row indices of ``rows``); every batch is dispatched before any fetch."""
    outputs = []
    for rows_B in row_batches(chunk, batch_size):
        real = rows_B[rows_B != PADDING_ROW]
        batch = run.feeder.batch(rows, rows_B)
        gate_BxF = core.sequence_gates(run, batch, "train")  # a MemSinks run scores with each sequence's mask
        if score:
            result = extract.extractability(run.graphdef, params, batch, prompt_len, num_new, mlp_gate_BxF=gate_BxF)
        else:
            result = extract.teacher_forced_extractability(
                run.graphdef, params, batch["tokens_BxL"], prompt_len, num_new, mlp_gate_BxF=gate_BxF
            )
            result = dict(result, example_ids_B=batch["example_ids_B"])
        outputs.append(
            (
                len(real),
                {
                    k: result[k]
                    for k in ("example_ids_B", "memorized", "prefix_match", "loss", *(("score",) if score else ()))
                },
            )
        )
    frames = []
    for n, result in jax.device_get(outputs):
        frames.append(
            pd.DataFrame(
                {
                    "example_id": result["example_ids_B"][:n].astype(np.int64),
                    "score": result["score"][:n] if score else np.full(n, np.nan, np.float32),
                    "memorized": result["memorized"][:n].astype(bool),
                    "prefix_match": result["prefix_match"][:n].astype(np.int32),
                    "loss": result["loss"][:n].astype(np.float32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


_RESULT_FIELDS = ("workdir", "step", "source", "prompt_len", "num_new", "score")  # what the numbers depend on
_RESUMABLE = _RESULT_FIELDS + ("batch_size", "chunk_batches")  # and how the parts were cut


def _differences(old: dict, new: dict, fields=_RESUMABLE) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fields if old.get(k) != new.get(k)]


def _part_numbers(parts_dir: str) -> dict[int, str]:
    """The complete parts, by chunk number (numeric: names are not compared as strings)."""
    found = {}
    for path in glob.glob(os.path.join(parts_dir, "part-*.csv")):
        match = re.fullmatch(r"part-(\d+)\.csv", os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


def _finished(out: str, job: dict) -> dict | None:
    """The totals of a finished job that asked for the same; an existing ``out`` of another job is refused."""
    if not os.path.exists(out):
        return None
    sidecar = out + ".json"
    if not os.path.isfile(sidecar):
        raise FileExistsError(
            f"--out={out!r} exists and is not a memdyn extract result (no {sidecar}); name another file or remove it"
        )
    with open(sidecar) as f:
        done = json.load(f)
    differences = _differences(done, job, _RESULT_FIELDS)
    if differences:
        raise FileExistsError(
            f"--out={out!r} holds another extraction ({'; '.join(differences)}); name another file or remove it"
        )
    return done


def _resume_point(parts_dir: str, job: dict) -> int:
    """The first chunk to score: after the complete parts of the same job (0 for a new job)."""
    job_path = os.path.join(parts_dir, "job.json")
    if os.path.isfile(job_path):
        with open(job_path) as f:
            differences = _differences(json.load(f), job)
        if differences:
            raise ValueError(
                f"{parts_dir} holds a partial extraction asked for differently "
                f"({'; '.join(differences)}); run it with the same arguments or remove {parts_dir}"
            )
    else:
        runs.atomic_write_json(job_path, job)
    done = set(_part_numbers(parts_dir))
    first = 0
    while first in done:  # parts are written in order; resume after the last contiguous one
        first += 1
    return first
