"""A run's life (``memdyn train``): check the config, prepare the data, then start, resume or fork, and train.

A workdir that already holds the run resumes from its latest complete checkpoint (a finished run is left alone);
``config.init_from`` starts a new run from another run's checkpoint (a fork, e.g. to insert a special set, or to
continue in the other layer layout, ``model.scan_layers``: the checkpoint is converted). A
stored run whose model, data, optimizer or seed differ is refused before any compute (``runs.check_compatible``,
the same check ``memdyn sweep`` makes). With several processes, process 0 builds the data while the others wait.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import config_dict

from memdyn import config as config_lib
from memdyn.data import build, run_data
from memdyn.model import layout
from memdyn.rundir import plots, runs
from memdyn.train import checkpoint, summary
from memdyn.train.loop import Trainer, is_primary
from memdyn.train.steps import Run, build_run


def train(config: config_dict.ConfigDict, workdir: str, dry_run: bool = False) -> dict[str, Any]:
    """``memdyn train``: validate and resolve the config, prepare data, build the run (all before compute), then
    train or resume.

    ``config`` is resolved once, here (``memdyn.config.resolve``), and passed on resolved; one already resolved is
    used as it is. Returns the last train.csv row (``{"step": ..., "complete": True}`` for a run that was already
    complete). ``dry_run``: stop after printing the run's summary (``memdyn.train.summary``), with nothing trained or
    written but the data stores; returns ``{"dry_run": True, "summary": <text>}``.
    """
    resolved = config if config_lib.is_resolved(config) else None
    stored = runs.read_config(workdir)
    if stored is not None:  # a resume: the stored run's vocabulary resolves the config now, to compare it first
        if resolved is None:
            resolved = config_lib.resolve(config, vocab_size=stored["model"]["vocab_size"])
        runs.check_compatible(stored, resolved, f"--workdir={workdir!r}")
    elif resolved is None:
        config_lib.validate(config)  # before any data is built; resolved below, when the data's vocabulary is known
    created = not os.path.exists(workdir)
    try:
        data = _prepare_data(config, workdir)  # after every process has read the stored config.json
        if resolved is None:
            resolved = config_lib.resolve(config, vocab_size=data.vocab_size, validated=True)
        run = build_run(resolved, data)
        text = summary.describe(run, config)
        if dry_run:
            print(text)
            return {"dry_run": True, "summary": text}
        trainer = Trainer(run, workdir)
    except Exception:
        if created and is_primary():  # a run that never started leaves no directory behind
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    start, resume_files = None, False
    if stored is not None:
        with run.context():
            start = trainer.checkpointer.restore_latest(run.abstract_params, run.abstract_opt_state)
        resume_files = start is not None
        if start is not None and start.step >= run.config.num_steps:
            trainer.checkpointer.close()
            logging.info("run in %s is complete (checkpoint %d of %d steps)", workdir, start.step, run.config.num_steps)
            return {"step": start.step - 1, "complete": True}
        logging.info("resuming %s from %s", workdir, f"checkpoint {start.step}" if start else "the beginning")
    if start is None and run.config.init_from:
        start = restore_parent(run, run.config.init_from)
        logging.info("forked from %s at checkpoint %d", run.config.init_from, start.step)
    if is_primary():
        runs.write_config(run.config, workdir)
    logging.info("%s", text)
    last_row = trainer.train(start, resume_files=resume_files)
    if is_primary():
        plots.plot_training(
            os.path.join(workdir, "train.csv"),
            os.path.join(workdir, "train.png"),
            eval_csv=os.path.join(workdir, "eval.csv"),
        )
        logging.info("%s", final_report(workdir, last_row))
    return last_row


def final_report(workdir: str, last_row: dict[str, Any]) -> str:
    """What a finished run says: its last step, the latest evaluation of every set, and what it wrote."""
    import pandas as pd

    lines = [
        f"done: {workdir}: {last_row['step'] + 1} steps, loss {last_row['loss']:.4f}, "
        f"M_update {last_row['mem_update']:.4f}"
    ]
    path = os.path.join(workdir, "eval.csv")
    evals = pd.read_csv(path) if os.path.isfile(path) and os.path.getsize(path) else pd.DataFrame()
    for name, rows in evals.groupby("set", sort=False) if len(evals) else []:
        last = rows.iloc[-1]
        lines.append(
            f"  {name}: M(f) {last['exact_match']:.4f}, loss {last['loss']:.4f} after {int(last['step'])} steps"
        )
    insertion_line = _insertion_report(workdir)
    if insertion_line:
        lines.append(insertion_line)
    written = sorted(
        name + ("/" if os.path.isdir(os.path.join(workdir, name)) else "")
        for name in os.listdir(workdir)
        if not name.startswith(".")
    )
    lines.append("  files: " + ", ".join(written))
    return "\n".join(lines)


def _insertion_report(workdir: str) -> str | None:
    """The final report's line on the run's insertion: the set, its schedule and the inserted updates done (the
    rows of insertions.csv); a sham fork says it is one and inserted 0 updates. None without an insertion."""
    import pandas as pd

    insert = (runs.read_config(workdir) or {}).get("insert") or {}
    if insert.get("at_step") is None:
        return None
    times, every = insert.get("times", 1), insert.get("every", 0)
    schedule = f"step {insert['at_step']}" + (f", {times} times every {every} steps" if times > 1 else "")
    if insert.get("sham"):
        return (
            f"  insertion: sham of set {insert.get('set')!r} at {schedule}: 0 inserted updates (a sham fork "
            "evaluates on the schedule without inserting; insertions.csv has no rows)"
        )
    path = os.path.join(workdir, "insertions.csv")
    done = len(pd.read_csv(path)) if os.path.isfile(path) and os.path.getsize(path) else 0
    return f"  insertion: set {insert.get('set')!r} at {schedule}: {done} inserted updates (insertions.csv)"


def parse_init_from(value: str) -> tuple[str, int | None]:
    """'<workdir>[@step]' -> (workdir, step or None for the latest checkpoint)."""
    path, _, step = value.partition("@")
    if step and not step.isdigit():
        raise ValueError(f"--init_from={value!r}: expected <workdir>[@<step>]")
    return path, (int(step) if step else None)


def restore_parent(run: Run, init_from: str) -> checkpoint.Restored:
    """The checkpoint a fork starts from, checked against the fork's config."""
    parent, at = parse_init_from(init_from)
    stored = runs.read_config(parent)
    if stored is None:
        raise FileNotFoundError(f"--init_from={init_from!r}: {parent!r} holds no memdyn run (no config.json)")
    runs.check_compatible(stored, run.config, f"--init_from={init_from!r}", fork=True)
    ckpt_dir = os.path.join(parent, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"--init_from={init_from!r}: {parent!r} has no checkpoints")
    parent_scanned = bool(stored["model"].get("scan_layers", False))
    # The parent's layout (blocks stacked or apart) is the restore target; a fork in the other layout converts.
    target = run if parent_scanned == run.config.model.scan_layers else _in_layout(run, parent_scanned)
    parent_ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
    try:
        if at is not None and at not in parent_ckpt.steps():
            raise ValueError(f"--init_from={init_from!r}: no checkpoint {at}; available: {parent_ckpt.steps()}")
        with run.context():
            restored = parent_ckpt.restore_latest(target.abstract_params, target.abstract_opt_state, at_most=at)
    finally:
        parent_ckpt.close()
    if restored is None or (at is not None and restored.step != at):
        raise ValueError(f"--init_from={init_from!r}: no readable checkpoint" + (f" {at}" if at is not None else ""))
    if target is not run:
        with run.context():
            params, opt_state = (
                layout.convert_layout(tree, scanned=run.config.model.scan_layers)
                for tree in (restored.params, restored.opt_state)
            )
            restored = dataclasses.replace(
                restored,
                params=jax.device_put(params, run.param_shardings),
                opt_state=jax.device_put(opt_state, run.opt_shardings),
            )
        logging.info(
            "converted %s's checkpoint %d to %s layers",
            parent,
            restored.step,
            "scanned" if run.config.model.scan_layers else "unrolled",
        )
    return restored


def _in_layout(run: Run, scanned: bool) -> Run:
    """The same run with its blocks stacked (``scanned``) or apart: only its abstract state is used."""
    config = copy.deepcopy(run.config)
    with config.unlocked():
        config.model.scan_layers = scanned
    return build_run(config, run.data)


def _prepare_data(config: config_dict.ConfigDict, workdir: str) -> run_data.RunData:
    """Process 0 creates the workdir and builds the stores; the others wait for it, then open them."""
    primary = is_primary()
    if primary:
        os.makedirs(workdir, exist_ok=True)
        data = build.prepare(config, workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("memdyn-data")
    if not primary:
        data = run_data.open_run_data(workdir, config)
    return data
