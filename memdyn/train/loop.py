"""The training loop of one run: normal steps, insertions, evaluations and checkpoints.

Every batch comes from the run's feeder, the next training batch prefetched while a step runs. Results are fetched
one step late, so the host never waits for the device inside the loop; checkpoints record how far every result
file had got (``RunResults.positions``), so a resumed run rewrites nothing twice and misses nothing. Starting,
resuming and forking runs is ``memdyn.train.job``'s job.

With several JAX processes every process runs the same loop and computes the same (replicated) metrics, but only
process 0 writes result files; the others keep the same row counts and part names, so the checkpoint meta is the
same everywhere. A SIGTERM to any of the processes makes every process save the same step: JAX's preemption
service (started by ``jax.distributed.initialize``) catches the signal, and ``reached_preemption_sync_point``,
asked after every step, names the first step all processes can still reach.

With one process, a SIGINT (Ctrl-C) does what a SIGTERM does: the loop saves a checkpoint after the current step
and stops (``Preempted``, whose ``status`` is 130 rather than 143); a second Ctrl-C stops at once, without saving
(``KeyboardInterrupt``). With several, SIGINT stays Python's KeyboardInterrupt in the process it reaches: JAX's
preemption notifier listens to SIGTERM only, so no other process would learn of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from memdyn import config as config_lib
from memdyn.data.order import PADDING_ROW
from memdyn.model import sharding
from memdyn.studies.memsinks import masks as memsinks
from memdyn.train import checkpoint, insertion
from memdyn.train import evaluate as evaluate_lib
from memdyn.train.results import RunResults
from memdyn.train.steps import Run, init_state, make_eval_step, make_train_step


@dataclasses.dataclass
class Counters:
    """What the loop carries from step to step (saved in every checkpoint)."""

    step: int = 0  # normal steps done: the next step of the example order
    update: int = 0  # updates done, inserted ones included
    inserted_updates: int = 0
    tokens_seen: int = 0  # non-padding tokens of the normally trained examples
    first_step: int = 0  # the normal step this run's results start from (a fork's fork point)


class Preempted(Exception):
    """SIGTERM or SIGINT (Ctrl-C) arrived; a checkpoint of the current step was saved. ``status``: the exit status
    of a process that stops for it, as one ended by the signal would have (128 + 15 = 143, 128 + 2 = 130)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signal.Signals(signum)

    @property
    def status(self) -> int:
        return 128 + self.signum.value


# What a stop for each signal is called in the line that says which checkpoint was saved.
_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0 of several, or the only one)."""
    return jax.process_index() == 0


class Trainer:
    """The training loop of one run in one workdir."""

    def __init__(self, run: Run, workdir: str):
        self.run = run
        self.workdir = workdir
        c = run.config
        self.step_fn = make_train_step(run)
        self.eval_step = make_eval_step(run)
        # MemSinks: every evaluation is repeated in these modes, written as "<set>@<mode>"
        excluded = memsinks.set_ids(run.data, c.memsinks.exclude_set) if c.memsinks.exclude_set else None
        self.mode_steps = {mode: make_eval_step(run, mode, excluded) for mode in c.eval.memsinks_modes}
        self.insert_steps = insertion.insertion_steps(c.insert, c.num_steps)
        # The inserted set is evaluated together with the control set (same distribution, never inserted).
        self.tracked = [c.insert.set] + (["control"] if "control" in run.data.sets else []) if self.insert_steps else []
        self.epoch_sets = list(c.eval.epoch_sets) if c.eval.every_epochs else []
        self.eval_sets = list(dict.fromkeys(list(c.eval.sets) + self.epoch_sets + self.tracked))
        self.stores = run.data.evaluable()
        for name in self.eval_sets:
            if name not in self.stores:
                raise ValueError(
                    f"tracked set {name!r} (config.eval.sets / eval.epoch_sets / insert.set) does not "
                    f"exist; this run's sets: {sorted(self.stores)}"
                )
        if self.insert_steps and not c.insert.sham:
            n = run.data.sets[c.insert.set].num_examples
            with run.context():
                shards = sharding.data_parallel_size(run.mesh)
            self.insert_rows = run.feeder.set_rows(
                run.data.sets[c.insert.set], insertion.insert_batch_size(n, c.batch_size, shards * c.grad_accum)
            )
        self.checkpointer = checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            keep=c.checkpoint.keep,
            keep_steps=tuple(c.checkpoint.keep_steps),
            async_save=c.checkpoint.async_save,
            every=c.checkpoint.every,
            save_steps=(c.num_steps,),
        )
        self.eval_batch_size = config_lib.eval_batch_size(c)
        self._stop_signal: signal.Signals | None = None  # a SIGTERM or SIGINT asked to save and stop

    def train(self, start: checkpoint.Restored | None = None, resume_files: bool = True) -> dict[str, Any]:
        """Trains from ``start`` (a restored checkpoint) or from scratch up to ``config.num_steps``.

        ``resume_files``: ``start`` is this run's own checkpoint, so the result files continue from it (a fork
        starts them afresh, and evaluates the tracked sets where it starts).
        """
        run, c = self.run, self.run.config
        if start is None:
            params, opt_state = init_state(run)
            counters = Counters()
        else:
            params, opt_state = start.params, start.opt_state
            counters = Counters(**start.meta["counters"])
        resuming = start is not None and resume_files
        if not resuming:
            counters.first_step = counters.step
        self.results = RunResults(
            self.workdir, c, run.order, start.meta if resuming else None, write=is_primary(), tag_names=run.tag_names
        )
        # One process: our own SIGTERM and SIGINT handlers. Several: JAX's preemption service owns SIGTERM (a
        # handler of ours would replace it) and agrees with the other processes on the step to save; SIGINT, which
        # it does not listen to, stays a KeyboardInterrupt. They act only in this loop: a signal before it is acted
        # on at the first step, one after it meets the handler there was before. An ignored SIGINT (that of a job
        # a script started in the background) stays ignored.
        synced = jax.process_count() > 1
        own_handler = not synced and threading.current_thread() is threading.main_thread()
        self._stop_signal = None
        handled = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
        previous_handlers = (
            {signum: signal.signal(signum, self._on_signal) for signum in handled} if own_handler else {}
        )
        try:
            with run.context():
                pending: list = []
                if not resuming:
                    for name in self._evaluated_after(counters.step, counters):
                        pending += self._evaluate(params, name, counters, self._label(counters.step))
                first_step = counters.step  # counters.step is first_step + 1 after the loop's first step
                for step in range(counters.step, c.num_steps):
                    items = []
                    if step in self.insert_steps:
                        params, opt_state, items = self._insert(params, opt_state, step, counters)
                    params, opt_state, item = self._train_step(params, opt_state, step, counters)
                    items.append(item)
                    for name in self._evaluated_after(counters.step, counters):
                        items += self._evaluate(params, name, counters, self._label(counters.step))
                    self._drain(pending)  # results of the previous step, fetched after this one is dispatched
                    pending = items
                    # read once: a signal arriving later counts from the next step. The sync point's ids count
                    # this loop's steps from 1: a notice before the first step sets the point at 1, so a resumed
                    # run would never reach it if the ids were the run's own step numbers.
                    stop_signal = self._asked_to_stop(counters.step - first_step) if synced else self._stop_signal
                    preempted = stop_signal is not None
                    if preempted or self.checkpointer.should_save(counters.step):
                        self._drain(pending)
                        pending = []
                        self._save(params, opt_state, counters)
                    if preempted:
                        self.checkpointer.wait()
                        raise Preempted(
                            f"{_SIGNAL_NAMES[stop_signal]}: saved checkpoint {counters.step} in {self.workdir!r}; "
                            "run the same command again to resume from it",
                            stop_signal,
                        )
                self._drain(pending)
        finally:
            for signum, previous in previous_handlers.items():
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: not set from Python
            self.checkpointer.close()
            self.results.close()
        self.params, self.opt_state = params, opt_state
        return self.results.last_row

    @staticmethod
    def _asked_to_stop(loop_step: int) -> signal.Signals | None:
        """Several processes: SIGTERM when every process is to save after this loop step (JAX's preemption sync)."""
        return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(loop_step) else None

    def _on_signal(self, signum, frame) -> None:
        """SIGTERM or a first SIGINT: save a checkpoint after the current step and stop. A SIGINT while a stop is
        already asked for stops at once, without saving. A SIGTERM's exit status (143) wins over a SIGINT's (130):
        a scheduler that sent it requeues the job on 143."""
        if signum == signal.SIGINT and self._stop_signal is not None:
            raise KeyboardInterrupt(
                "Ctrl-C while stopping: stopped at once, without saving; the same command resumes from the last "
                "checkpoint"
            )
        if self._stop_signal != signal.SIGTERM:
            self._stop_signal = signal.Signals(signum)
        if signum == signal.SIGINT:
            logging.warning(
                "Ctrl-C: saving a checkpoint after the current step, then stopping (Ctrl-C again: stop now, unsaved)"
            )
        else:
            logging.warning("SIGTERM received: saving a checkpoint after the current step")

    def _train_step(self, params, opt_state, step: int, counters: Counters):
        run = self.run
        params, opt_state, m = self.step_fn(params, opt_state, run.feeder.train_batch(step), np.int32(counters.update))
        if step + 1 < run.config.num_steps:  # the next batch is read and placed while this step runs
            run.feeder.prefetch(step + 1)
        rows = run.feeder.train_rows(step)
        counters.tokens_seen += int(run.data.train.token_counts(run.data.pad_id)[rows[rows != PADDING_ROW]].sum())
        item = (
            "train",
            dict(
                step=step,
                update=counters.update,
                inserted_updates=counters.inserted_updates,
                tokens_seen=counters.tokens_seen,
            ),
            m,
        )
        counters.update += 1
        counters.step = step + 1
        return params, opt_state, item

    def _insert(self, params, opt_state, step: int, counters: Counters):
        """The inserted set's updates before normal step ``step``, with its evaluations right before and right
        after them. A sham insertion (``insert.sham``) evaluates the same, without the updates."""
        c, run = self.run.config, self.run
        evaluated = self._evaluated_after(step, counters)
        items = [
            item
            for name in self.tracked
            if name not in evaluated
            for item in self._evaluate(params, name, counters, at_insertion="before")
        ]
        store = run.data.sets[c.insert.set]
        for repeat in range(0 if c.insert.sham else c.insert.repeats):
            for b, rows in enumerate(self.insert_rows):
                params, opt_state, m = self.step_fn(
                    params, opt_state, run.feeder.batch(store, rows), np.int32(counters.update)
                )
                items.append(
                    ("insert", dict(step=step, update=counters.update, set=c.insert.set, repeat=repeat, batch=b), m)
                )
                counters.update += 1
                counters.inserted_updates += 1
        for name in self.tracked:
            items += self._evaluate(params, name, counters, at_insertion="after")
        return params, opt_state, items

    def _evaluate(self, params, name: str, counters: Counters, at_insertion: str = "") -> list:
        """The evaluation of set ``name`` and, in a MemSinks run, of ``name@<mode>`` for every eval mode."""
        run = self.run
        extra = dict(update=counters.update, inserted_updates=counters.inserted_updates, at_insertion=at_insertion)
        steps = {name: self.eval_step, **{f"{name}@{mode}": fn for mode, fn in self.mode_steps.items()}}
        return [
            (
                "eval",
                evaluate_lib.evaluate(
                    fn, params, run.feeder, self.stores[name], self.eval_batch_size, label, counters.step, **extra
                ),
                None,
            )
            for label, fn in steps.items()
        ]

    def _label(self, steps_done: int) -> str:
        """``at_insertion`` of the scheduled evaluations after ``steps_done`` steps: they precede any insertion
        at that step."""
        return "before" if steps_done in self.insert_steps else ""

    def _evaluated_after(self, steps_done: int, counters: Counters) -> list[str]:
        """Sets evaluated once ``steps_done`` normal steps are done (before any insertion at that step): every
        set where the run's results start, then by schedule. A pure function of the step, so a resumed run
        evaluates exactly what an uninterrupted one does."""
        c = self.run.config
        if steps_done == counters.first_step:
            names = list(self.eval_sets)
        else:
            last = steps_done == c.num_steps  # every tracked set is evaluated at the end
            names = list(c.eval.sets) if c.eval.every and (steps_done % c.eval.every == 0 or last) else []
            first = self.insert_steps[0] if self.insert_steps else None
            if insertion.evaluates_inserted_set(c.insert, first, steps_done) or (last and first is not None):
                names += [name for name in self.tracked if name not in names]
        spe, every = self.run.order.steps_per_epoch, c.eval.every_epochs
        if every and steps_done % spe == 0 and (steps_done // spe) % every == 0:
            names += [name for name in self.epoch_sets if name not in names]  # after whole epochs
        return names

    def _save(self, params, opt_state, counters: Counters) -> None:
        meta = {
            "counters": dataclasses.asdict(counters),
            **self.results.positions(),
            "config": json.loads(config_lib.to_json(self.run.config)),
        }
        self.checkpointer.save(counters.step, params, opt_state, meta)

    def _drain(self, items: list) -> None:
        for kind, info, m in items:
            if kind == "eval":
                self.results.record_eval(info)
            else:
                self.results.record_update(kind, info, jax.device_get(m))
