"""The result files of one run and what goes into each row: train.csv, eval.csv, insertions.csv, the per-example
records (examples/, eval_examples/) and TensorBoard.

``RunResults`` opens them cut back to what a checkpoint's ``positions()`` said existed (so a resumed run rewrites
nothing twice and misses nothing), turns the fetched metrics of updates and evaluations into rows, and reports
progress. Row counts and part names start from the checkpoint, not from the files, so that processes which write
nothing (all but process 0) count the same and save the same checkpoint meta.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ml_collections import config_dict

from memdyn.data.order import StepOrder
from memdyn.rundir import runs
from memdyn.rundir.runs import IDENTITY_COLUMNS
from memdyn.studies.pos import counts as pos
from memdyn.train import writers
from memdyn.train.evaluate import PendingEval
from memdyn.train.progress import Progress

TRAIN_CSV_COLUMNS = (
    "step",
    "update",
    "inserted_updates",
    "epoch",
    "epochs_done",
    "examples_seen",
    "tokens_seen",
    "loss",
    "mem_update",
    "lr",
    "grad_norm",
    "num_tokens",
    "steps_per_sec",
) + IDENTITY_COLUMNS
EVAL_CSV_COLUMNS = (
    "step",
    "update",
    "inserted_updates",
    "set",
    "at_insertion",
    "exact_match",
    "loss",
    "perplexity",
    "num_examples",
    "num_tokens",
) + IDENTITY_COLUMNS
INSERT_CSV_COLUMNS = (
    "step",
    "update",
    "set",
    "repeat",
    "batch",
    "loss",
    "exact_match",
    "lr",
    "grad_norm",
) + IDENTITY_COLUMNS
POS_CSV_COLUMNS = ("step", "update", "set", "tag", "positions", "right", "exact", "R", "R_mem") + IDENTITY_COLUMNS
CSV_FILES = {"train.csv": TRAIN_CSV_COLUMNS, "eval.csv": EVAL_CSV_COLUMNS, "insertions.csv": INSERT_CSV_COLUMNS}
# written when the run counts parts of speech (memdyn.studies.pos.counts): set "update" is the step's batch
POS_CSV = "pos.csv"
RECORD_DIRS = ("examples", "eval_examples")
TENSORBOARD = ("loss", "mem_update", "lr", "grad_norm")


class RunResults:
    def __init__(
        self,
        workdir: str,
        config: config_dict.ConfigDict,
        order: StepOrder,
        positions: dict[str, Any] | None,
        *,
        write: bool,
        tag_names: tuple[str, ...] = (),
    ):
        """``positions``: a checkpoint's (None: a run that starts afresh, whose files are emptied).
        ``tag_names``: the parts of speech whose counts the steps return (pos.csv), or none."""
        self.config, self.order, self.tag_names = config, order, tuple(tag_names)
        self.identity = runs.identity(config, workdir)
        join = lambda name: os.path.join(workdir, name)  # noqa: E731
        rows, parts = (positions or {}).get("csv_rows", {}), (positions or {}).get("parts", {})
        files = {**CSV_FILES, **({POS_CSV: POS_CSV_COLUMNS} if self.tag_names else {})}
        self.csv = {
            name: writers.CsvWriter(join(name), columns, rows=rows.get(name, 0), write=write)
            for name, columns in files.items()
        }
        self.records = {
            name: writers.RecordWriter(join(name), parts.get(name, []), write=write) for name in RECORD_DIRS
        }
        self.tensorboard = writers.tensorboard_writer(join("tensorboard"), write=write)
        self.progress = Progress(config.num_steps, self.tensorboard)
        self.last_row: dict[str, Any] = {}

    def positions(self) -> dict[str, Any]:
        """How far every file has got (records flushed first): what a checkpoint saves."""
        for writer in self.records.values():
            writer.flush()
        return {
            "csv_rows": {name: w.rows for name, w in self.csv.items()},
            "parts": {name: w.parts() for name, w in self.records.items()},
        }

    def record_update(self, kind: str, info: dict[str, Any], m: dict[str, np.ndarray]) -> None:
        """One fetched update: an inserted one (``kind`` "insert") or a normal step ("train")."""
        c = self.config
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {info['step']} ({kind} update {info['update']}, "
                f"config.optimizer.lr={c.optimizer.lr}); stopping"
            )
        common = {"loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]), **self.identity}
        if kind == "insert":
            row = {**info, **common, "exact_match": float(m["mem_update"])}
            self.csv["insertions.csv"].write_scalars(row.pop("step"), row)
            return
        step = info["step"]
        steps_per_sec = self.progress.update(step + 1, loss, float(m["mem_update"]))
        if c.record_examples:
            real = m["example_ids_B"] >= 0  # padding rows complete an epoch's smaller batches
            self.records["examples"].write_summaries(
                step,
                {
                    "example_id": m["example_ids_B"][real].astype(np.int64),
                    "exact_match": m["exact_match_B"][real].astype(np.float32),
                    "loss": m["loss_B"][real].astype(np.float32),
                    "num_tokens": m["num_tokens_B"][real].astype(np.int32),
                },
            )
        row = {
            "update": info["update"],
            "inserted_updates": info["inserted_updates"],
            "epoch": self.order.epoch(step),
            "epochs_done": (step + 1) / self.order.steps_per_epoch,
            "examples_seen": self.order.examples_seen(step + 1),
            "tokens_seen": info["tokens_seen"],
            "mem_update": float(m["mem_update"]),
            "num_tokens": int(m["num_tokens"]),
            "steps_per_sec": steps_per_sec,
            **common,
        }
        self.last_row = {"step": step, **row}
        if step % c.log_every == 0 or step == c.num_steps - 1:
            self.csv["train.csv"].write_scalars(step, row)
            self._write_pos(step, info["update"], "update", m)
            self.tensorboard.write_scalars(step, {k: row[k] for k in TENSORBOARD})

    def record_eval(self, pending: PendingEval) -> None:
        """The set's row (and per-example records), then one "<set>@<subset>" row per subset of positions."""
        aggregates, per_example = pending.result()
        self._write_eval(pending, pending.name, aggregates, per_example)
        self._write_pos(pending.step, pending.extra.get("update"), pending.name, pending.pos_counts())
        for subset in pending.subsets():
            self._write_eval(pending, f"{pending.name}@{subset}", *pending.result(subset))
        self.tensorboard.write_scalars(
            pending.step,
            {f"{pending.name}/exact_match": aggregates["exact_match"], f"{pending.name}/loss": aggregates["loss"]},
        )
        self.progress.evaluated(
            pending.step,
            pending.name,
            aggregates["exact_match"],
            aggregates["loss"],
            at_insertion=pending.extra.get("at_insertion", ""),
            sham=bool(self.config.insert.sham),
        )

    def _write_eval(self, pending: PendingEval, name: str, aggregates: dict, per_example: dict) -> None:
        self.csv["eval.csv"].write_scalars(pending.step, {"set": name, **pending.extra, **aggregates, **self.identity})
        self.records["eval_examples"].write_summaries(
            pending.step, {"set": np.full(len(per_example["example_id"]), name), **per_example}
        )

    def _write_pos(self, step: int, update, set_name: str, counts: dict[str, np.ndarray]) -> None:
        if not self.tag_names or "pos_positions_T" not in counts:
            return
        for row in pos.rows(list(self.tag_names), counts):
            self.csv[POS_CSV].write_scalars(step, {"update": update, "set": set_name, **row, **self.identity})

    def close(self) -> None:
        for writer in (*self.csv.values(), *self.records.values(), self.tensorboard):
            writer.close()
