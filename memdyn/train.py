"""The training loop (``memdyn train``): normal steps, insertions, evaluations, checkpoints, resume and forks.

Results are fetched one step late, so the host never waits for the device inside the loop; checkpoints record
how far every result file had got, so a resumed run rewrites nothing twice and misses nothing.

With several JAX processes every process runs the same loop and computes the same (replicated) metrics, but only
process 0 builds the data and writes result files; the others keep the same row counts and part names, so the
checkpoint meta is the same everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import config_dict

from memdyn import checkpoint, insertion
from memdyn import config as config_lib
from memdyn import evaluate as evaluate_lib
from memdyn import plots, sharding, writers
from memdyn.data import sources
from memdyn.core import Run, build_run, device_batch, init_state, make_eval_step, make_train_step

IDENTITY_COLUMNS = ("run", "size", "params", "causal", "seed", "peak_lr", "batch_size", "seq_len")
TRAIN_CSV_COLUMNS = ("step", "update", "inserted_updates", "epoch", "epochs_done", "examples_seen", "tokens_seen",
                     "loss", "mem_update", "lr", "grad_norm", "num_tokens", "steps_per_sec") + IDENTITY_COLUMNS
EVAL_CSV_COLUMNS = ("step", "update", "inserted_updates", "set", "exact_match", "loss", "perplexity",
                    "num_examples", "num_tokens") + IDENTITY_COLUMNS
INSERT_CSV_COLUMNS = ("step", "update", "set", "repeat", "batch", "loss", "exact_match", "lr",
                      "grad_norm") + IDENTITY_COLUMNS


@dataclasses.dataclass
class Counters:
    """What the loop carries from step to step (saved in every checkpoint)."""
    step: int = 0  # normal steps done: the next step of the example order
    update: int = 0  # updates done, inserted ones included
    inserted_updates: int = 0
    tokens_seen: int = 0  # non-padding tokens of the normally trained examples


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the current step was saved."""


class Trainer:
    """The training loop of one run in one workdir: normal steps, insertions, evaluations, checkpoints."""

    def __init__(self, run: Run, workdir: str):
        self.run = run
        self.workdir = workdir
        c = run.config
        self.step_fn = make_train_step(run)
        self.eval_step = make_eval_step(run)
        self.insert_steps = insertion.insertion_steps(c.insert, c.num_steps)
        # The inserted set is evaluated together with the control set (same distribution, never inserted).
        self.tracked = [c.insert.set] + (["control"] if "control" in run.data.sets else []) \
            if self.insert_steps else []
        eval_sets = list(c.eval.sets) + self.tracked
        for name in eval_sets:
            if name not in run.data.sets:
                raise ValueError(f"tracked set {name!r} (config.eval.sets / config.insert.set) does not exist; "
                                 f"this run's sets: {sorted(run.data.sets)}")
        self.batches = {name: evaluate_lib.padded_batches(run.data.sets[name], c.batch_size, run.data.pad_id)
                        for name in dict.fromkeys(eval_sets)}
        if self.insert_steps:
            self.insert_batches = evaluate_lib.padded_batches(
                run.data.sets[c.insert.set], self._insert_batch_size(), run.data.pad_id)
        self.checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.checkpoint.keep,
                                                    keep_steps=tuple(c.checkpoint.keep_steps),
                                                    async_save=c.checkpoint.async_save)
        self.identity = {"run": os.path.basename(os.path.abspath(workdir)), "size": c.model.size,
                         "params": c.model.params, "causal": c.model.causal, "seed": c.seed,
                         "peak_lr": c.optimizer.lr, "batch_size": c.batch_size, "seq_len": c.data.seq_len}
        self._preempted = False
        self.primary = is_primary()

    def _insert_batch_size(self) -> int:
        n = self.run.data.sets[self.run.config.insert.set].num_examples
        with self.run.context():
            shards = sharding.data_parallel_size(self.run.mesh)
        return insertion.insert_batch_size(n, self.run.config.batch_size, shards)

    # -- files -------------------------------------------------------------------------------------------------
    def _open_files(self, meta: dict[str, Any] | None) -> None:
        """Opens the result files, first cutting them back to what ``meta`` (a checkpoint's) says existed.

        Row counts and part names start from ``meta``, not from the files, so that processes which write nothing
        (all but process 0) count the same and save the same meta.
        """
        join = lambda name: os.path.join(self.workdir, name)
        csvs = {"train.csv": TRAIN_CSV_COLUMNS, "eval.csv": EVAL_CSV_COLUMNS, "insertions.csv": INSERT_CSV_COLUMNS}
        rows = (meta or {}).get("csv_rows", {})
        if self.primary:
            for name in csvs:
                writers.truncate_csv(join(name), rows.get(name, 0))
        self.csv = {name: writers.CsvWriter(join(name), columns, rows=rows.get(name, 0), write=self.primary)
                    for name, columns in csvs.items()}
        parts = (meta or {}).get("parts", {})
        self.records = {name: writers.ExampleRecordWriter(join(name), parts.get(name, []), write=self.primary)
                        for name in ("examples", "eval_examples")}
        self.tensorboard = writers.TensorBoardWriter(join("tensorboard"), write=self.primary)

    def _close_files(self) -> None:
        for writer in (*self.csv.values(), *self.records.values(), self.tensorboard):
            writer.close()

    # -- loop ----------------------------------------------------------------------------------------------------
    def train(self, start: checkpoint.Restored | None = None, resume_files: bool = True) -> dict[str, Any]:
        """Trains from ``start`` (a restored checkpoint) or from scratch up to ``config.num_steps``."""
        run, c = self.run, self.run.config
        if start is None:
            params, opt_state = init_state(run)
            counters = Counters()
        else:
            params, opt_state = start.params, start.opt_state
            counters = Counters(**start.meta["counters"])
        self._open_files(start.meta if (start is not None and resume_files) else None)
        self._progress = _Progress(counters.step, c.num_steps)
        self._last_row: dict[str, Any] = {}
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals go to the main thread
        previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if in_main_thread else None
        try:
            with run.context():
                pending: list = []
                if not (start is not None and resume_files):  # a new run or fork: evaluate where it starts
                    pending += [self._evaluate(params, name, counters) for name in self.batches]
                for step in range(counters.step, c.num_steps):
                    items = []
                    if step in self.insert_steps:
                        params, opt_state, items = self._insert(params, opt_state, step, counters)
                    params, opt_state, item = self._train_step(params, opt_state, step, counters)
                    items.append(item)
                    items += [self._evaluate(params, name, counters) for name in self._sets_to_evaluate(counters.step)]
                    self._drain(pending)  # results of the previous step, fetched after this one is dispatched
                    pending = items
                    if self._checkpoint_due(counters.step) or self._preempted:
                        self._drain(pending)
                        pending = []
                        self._save(params, opt_state, counters)
                    if self._preempted:
                        self.checkpointer.wait()
                        raise Preempted(f"SIGTERM: saved checkpoint {counters.step} in {self.workdir!r}; run "
                                        "`memdyn train` with the same --workdir to resume")
                self._drain(pending)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
            self.checkpointer.close()
            self._close_files()
        self.params, self.opt_state = params, opt_state
        return self._last_row

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint after the current step")
        self._preempted = True

    def _train_step(self, params, opt_state, step: int, counters: Counters):
        tokens, _ = device_batch(self.run, step)
        params, opt_state, m = self.step_fn(params, opt_state, tokens, np.int32(counters.update))
        # Records cover the global batch [B]; with several processes ``rows`` holds only this process's part.
        batch_rows = self.run.order.rows(step)
        counters.tokens_seen += int(self.run.data.train.token_counts(self.run.data.pad_id)[batch_rows].sum())
        item = ("train", dict(step=step, update=counters.update, inserted_updates=counters.inserted_updates,
                              tokens_seen=counters.tokens_seen,
                              example_ids=np.asarray(self.run.data.train.example_ids[batch_rows])), m)
        counters.update += 1
        counters.step = step + 1
        return params, opt_state, item

    def _insert(self, params, opt_state, step: int, counters: Counters):
        """The inserted set's updates before normal step ``step``, then its evaluation right after them."""
        c, items = self.run.config, []
        for repeat in range(c.insert.repeats):
            for b, (tokens, _, _) in enumerate(self.insert_batches):
                device_tokens = jax.make_array_from_process_local_data(self.run.batch_sharding, tokens,
                                                                       global_shape=tokens.shape)
                params, opt_state, m = self.step_fn(params, opt_state, device_tokens, np.int32(counters.update))
                items.append(("insert", dict(step=step, update=counters.update, set=c.insert.set, repeat=repeat,
                                             batch=b), m))
                counters.update += 1
                counters.inserted_updates += 1
        items += [self._evaluate(params, name, counters) for name in self.tracked]
        return params, opt_state, items

    def _evaluate(self, params, name: str, counters: Counters):
        extra = dict(update=counters.update, inserted_updates=counters.inserted_updates)
        return ("eval", evaluate_lib.evaluate(self.eval_step, params, self.batches[name], self.run.batch_sharding,
                                              name, counters.step, **extra), None)

    def _sets_to_evaluate(self, steps_done: int) -> list[str]:
        c = self.run.config
        last = steps_done == c.num_steps  # every tracked set is evaluated at the end
        names = list(c.eval.sets) if c.eval.every and (steps_done % c.eval.every == 0 or last) else []
        first = self.insert_steps[0] if self.insert_steps else None
        inserted_due = insertion.evaluates_inserted_set(c.insert, first, steps_done) or (last and first is not None)
        if inserted_due:
            names += [name for name in self.tracked if name not in names]
        return names

    def _checkpoint_due(self, steps_done: int) -> bool:
        c = self.run.config
        every = c.checkpoint.every
        return (steps_done == c.num_steps or steps_done in tuple(c.checkpoint.keep_steps)
                or (every > 0 and steps_done % every == 0))

    def _save(self, params, opt_state, counters: Counters) -> None:
        for writer in self.records.values():
            writer.flush()
        meta = {"counters": dataclasses.asdict(counters),
                "csv_rows": {name: w.rows for name, w in self.csv.items()},
                "parts": {name: w.parts() for name, w in self.records.items()},
                "config": json.loads(config_lib.to_json(self.run.config))}
        self.checkpointer.save(counters.step, params, opt_state, meta)

    # -- results -------------------------------------------------------------------------------------------------
    def _drain(self, items: list) -> None:
        for kind, info, m in items:
            if kind == "eval":
                self._record_eval(info)
            else:
                self._record_update(kind, info, jax.device_get(m))

    def _record_update(self, kind: str, info: dict[str, Any], m: dict[str, np.ndarray]) -> None:
        c, order = self.run.config, self.run.order
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {info['step']} ({kind} update {info['update']}, "
                                     f"config.optimizer.lr={c.optimizer.lr}); stopping")
        common = {"loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]), **self.identity}
        if kind == "insert":
            self.csv["insertions.csv"].write([{**info, **common, "exact_match": float(m["mem_update"])}])
            return
        step = info["step"]
        steps_per_sec = self._progress.update(step, loss, float(m["mem_update"]))
        if c.record_examples:
            self.records["examples"].add(step, example_id=info["example_ids"].astype(np.int64),
                                         exact_match=m["exact_match_B"].astype(np.float32),
                                         loss=m["loss_B"].astype(np.float32),
                                         num_tokens=m["num_tokens_B"].astype(np.int32))
        row = {"step": step, "update": info["update"], "inserted_updates": info["inserted_updates"],
               "epoch": order.epoch(step), "epochs_done": (step + 1) / order.steps_per_epoch,
               "examples_seen": (step + 1) * c.batch_size, "tokens_seen": info["tokens_seen"],
               "mem_update": float(m["mem_update"]), "num_tokens": int(m["num_tokens"]),
               "steps_per_sec": steps_per_sec, **common}
        self._last_row = row
        if step % c.log_every == 0 or step == c.num_steps - 1:
            self.csv["train.csv"].write([row])
            self.tensorboard.write_scalars(step, {k: row[k] for k in ("loss", "mem_update", "lr", "grad_norm")})

    def _record_eval(self, pending: evaluate_lib.PendingEval) -> None:
        aggregates, per_example = pending.result()
        row = {"step": pending.step, "set": pending.name, **pending.extra, **aggregates, **self.identity}
        self.csv["eval.csv"].write([row])
        self.records["eval_examples"].add(pending.step, set=np.full(len(per_example["example_id"]), pending.name),
                                          **per_example)
        self.tensorboard.write_scalars(pending.step, {f"{pending.name}/exact_match": aggregates["exact_match"],
                                                      f"{pending.name}/loss": aggregates["loss"]})


class _Progress:
    """steps/s over the recent window and an ETA, logged every few seconds."""

    def __init__(self, start_step: int, num_steps: int, every_s: float = 5.0):
        self.num_steps, self.every_s = num_steps, every_s
        self.window_start = (time.perf_counter(), start_step)
        self.last_log = time.perf_counter()
        self.rate = float("nan")

    def update(self, step: int, loss: float, mem_update: float) -> float:
        now = time.perf_counter()
        t0, s0 = self.window_start
        if step > s0 and now > t0:
            self.rate = (step - s0) / (now - t0)
        if now - t0 > 10.0:  # slide the window so the rate tracks the current speed
            self.window_start = (now, step)
        done = step + 1 == self.num_steps
        if now - self.last_log >= self.every_s or done:
            self.last_log = now
            eta = (self.num_steps - step - 1) / self.rate if self.rate > 0 else float("nan")
            logging.info("step %d/%d  loss %.4f  mem_update %.4f  %.2f steps/s  ETA %s", step + 1, self.num_steps,
                         loss, mem_update, self.rate, _duration(eta))
        return self.rate


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0 of several, or the only one)."""
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _prepare_data(config: config_dict.ConfigDict, workdir: str) -> sources.RunData:
    """Process 0 creates the workdir and builds the stores; the others wait for it, then open them."""
    primary = is_primary()
    if primary:
        os.makedirs(workdir, exist_ok=True)
        data = sources.prepare(config, workdir)
    _barrier("memdyn-data")
    if not primary:
        data = sources.open_run_data(workdir, config)
    return data


def _stored_config(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_compatible(stored: dict[str, Any], config: config_dict.ConfigDict, where: str) -> None:
    """Refuses to continue a run (or fork one) whose model, data, optimizer or seed differ, naming the fields."""
    resolved = config_lib.resolve(config, vocab_size=stored["model"]["vocab_size"])
    requested = json.loads(config_lib.to_json(resolved))
    if where.startswith("--init_from"):  # a fork is a new run: its provenance and insertions may differ
        requested["init_from"] = stored.get("init_from")
    problems = checkpoint.incompatibilities(stored, requested)
    if problems:
        raise ValueError(f"{where} holds a run with an incompatible config: " + "; ".join(problems[:10]))


def write_config(config: config_dict.ConfigDict, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_lib.to_json(config))
    os.replace(tmp, path)


def parse_init_from(value: str) -> tuple[str, int | None]:
    """'<workdir>[@step]' -> (workdir, step or None for the latest checkpoint)."""
    path, _, step = value.partition("@")
    if step and not step.isdigit():
        raise ValueError(f"--init_from={value!r}: expected <workdir>[@<step>]")
    return path, (int(step) if step else None)


def _restore_parent(run: Run, init_from: str) -> checkpoint.Restored:
    parent, at = parse_init_from(init_from)
    stored = _stored_config(parent)
    if stored is None:
        raise FileNotFoundError(f"--init_from={init_from!r}: {parent!r} holds no memdyn run (no config.json)")
    _check_compatible(stored, run.config, f"--init_from={init_from!r}")
    ckpt_dir = os.path.join(parent, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"--init_from={init_from!r}: {parent!r} has no checkpoints")
    parent_ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
    try:
        if at is not None and at not in parent_ckpt.steps():
            raise ValueError(f"--init_from={init_from!r}: no checkpoint {at}; available: {parent_ckpt.steps()}")
        with run.context():
            restored = parent_ckpt.restore_latest(run.abstract_params, run.abstract_opt_state, at_most=at)
    finally:
        parent_ckpt.close()
    if restored is None or (at is not None and restored.step != at):
        raise ValueError(f"--init_from={init_from!r}: no readable checkpoint" + (f" {at}" if at is not None else ""))
    return restored


def train(config: config_dict.ConfigDict, workdir: str) -> dict[str, Any]:
    """``memdyn train``: validate, prepare data, build the run (all before compute), then train or resume.

    A workdir that already holds this run resumes from its latest complete checkpoint; ``config.init_from``
    starts a new run from another run's checkpoint (a fork, e.g. to insert a special set).
    """
    config_lib.validate(config)
    stored = _stored_config(workdir)
    if stored is not None:
        _check_compatible(stored, config, f"--workdir={workdir!r}")
    data = _prepare_data(config, workdir)  # after every process has read the stored config.json
    run = build_run(config, data)
    trainer = Trainer(run, workdir)
    start, resume_files = None, False
    if stored is not None:
        with run.context():
            start = trainer.checkpointer.restore_latest(run.abstract_params, run.abstract_opt_state)
        resume_files = start is not None
        if start is not None and start.step >= run.config.num_steps:
            trainer.checkpointer.close()
            logging.info("run in %s is complete (checkpoint %d of %d steps)", workdir, start.step,
                         run.config.num_steps)
            return {"step": start.step - 1, "complete": True}
        logging.info("resuming %s from %s", workdir, f"checkpoint {start.step}" if start else "the beginning")
    if start is None and run.config.init_from:
        start = _restore_parent(run, run.config.init_from)
        logging.info("forked from %s at checkpoint %d", run.config.init_from, start.step)
    if is_primary():
        write_config(run.config, workdir)
    logging.info("model %s: %s params, %d layers x d_model %d; mesh %s; %d examples, %d steps/epoch",
                 run.config.model.size, f"{run.config.model.params:,}", run.shape.num_layers, run.shape.d_model,
                 dict(run.mesh.shape), data.train.num_examples, run.order.steps_per_epoch)
    summary = trainer.train(start, resume_files=resume_files)
    if is_primary():
        plots.plot_training(os.path.join(workdir, "train.csv"), os.path.join(workdir, "train.png"))
    return summary
