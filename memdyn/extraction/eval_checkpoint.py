"""``memdyn eval``: a tracked set (or the training set) evaluated at a saved checkpoint.

Writes, under <workdir>/evals/ (``<set>@<mode>`` in place of ``<set>`` for a MemSinks mode other than train):
  <set>-<step>.csv          per example: example_id, exact_match, loss, num_tokens (M(f) and loss per example)
  <set>-<step>-extract.csv  with --extract (causal LMs): example_id, score, memorized, prefix_match, loss —
                            Biderman et al.'s k-extractability with a prompt of M tokens and N greedy tokens; examples
                            with
                            fewer than M + N real tokens are left out (their continuation would be padding)
and returns the aggregates (exact_match, loss, perplexity; with --extract the examples scored, the examples left
out for being shorter than prompt + continuation, the extractable fraction and the mean score).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import pandas as pd

from memdyn import config as config_lib
from memdyn.data import run_data
from memdyn.extraction import extractability as extract
from memdyn.rundir import runs
from memdyn.studies.memsinks import masks as memsinks
from memdyn.train import checkpoint, evaluate
from memdyn.train import steps as core


def evaluate_checkpoint(
    workdir: str,
    set_name: str,
    step: int | None = None,
    *,
    extract_k: bool = False,
    prompt_len: int = 32,
    num_new: int = 32,
    memsinks_mode: str = "train",
    exclude_set: str | None = None,
    exclude_count: int | None = None,
) -> dict[str, Any]:
    """``memsinks_mode`` (MemSinks runs): the MLP gates to evaluate with; mode ``exclude`` switches off the pool
    units of the first ``exclude_count`` (default: all) sequences of ``exclude_set`` and reports the fraction of
    the pool they cover."""
    config = runs.load_config(workdir)
    data = run_data.open_run_data(workdir, config)
    stores = data.evaluable()
    if set_name not in stores:
        raise ValueError(f"--set={set_name!r} is not a set of this run; sets: {sorted(stores)}")
    store = stores[set_name]
    if extract_k and not config.model.causal:
        raise ValueError("--extract needs a causal LM; this run trains a masked LM (config.model.causal=False)")
    if extract_k and store.seq_len < prompt_len + num_new:
        raise ValueError(
            f"--extract needs examples of at least prompt_len + num_new = {prompt_len + num_new} "
            f"tokens; this run's examples have {store.seq_len}"
        )
    excluded = _excluded_ids(config, data, memsinks_mode, exclude_set, exclude_count)
    run = core.build_run(config, data)
    restored = restore(run, workdir, step)
    out_dir = os.path.join(workdir, "evals")
    label = set_name if memsinks_mode == "train" else f"{set_name}@{memsinks_mode}"
    with run.context():
        eval_step = core.make_eval_step(run, memsinks_mode, excluded)
        pending = evaluate.evaluate(
            eval_step, restored.params, run.feeder, store, config_lib.eval_batch_size(config), label, restored.step
        )
        aggregates, per_example = pending.result()
    aggregates = {"set": label, "step": restored.step, **aggregates}
    for subset in pending.subsets():  # a document-ID run's content positions: <label>@content-<step>.csv
        sub_aggregates, sub_per_example = pending.result(subset)
        aggregates[f"{subset}_exact_match"] = sub_aggregates["exact_match"]
        aggregates[f"{subset}_loss"] = sub_aggregates["loss"]
        _write_csv(pd.DataFrame(sub_per_example), os.path.join(out_dir, f"{label}@{subset}-{restored.step}.csv"))
    if excluded is not None:
        sinks = memsinks.from_config(run.config)
        aggregates.update(
            excluded_ids=len(excluded),
            pool_fraction_excluded=float(np.mean(np.asarray(sinks.excluded_units(excluded)))),
        )
    _write_csv(pd.DataFrame(per_example), os.path.join(out_dir, f"{label}-{restored.step}.csv"))
    if extract_k:
        frame = _extractability(run, restored.params, store, prompt_len, num_new, memsinks_mode, excluded)
        _write_csv(frame, os.path.join(out_dir, f"{label}-{restored.step}-extract.csv"))
        # Examples shorter than M + N real tokens have no continuation to score: say how many were left out.
        aggregates.update(
            extract_examples=len(frame),
            extract_left_out=store.num_examples - len(frame),
            memorized_fraction=float(frame["memorized"].mean()),
            mean_score=float(frame["score"].mean()),
        )
    return aggregates


def restore(run: core.Run, workdir: str, step: int | None):
    """The run's checkpoint ``step`` (None: the latest), restored onto ``run``'s shardings."""
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        steps = ckpt.steps()
        if not steps or (step is not None and step not in steps):
            raise ValueError(f"--step={step}: no such checkpoint in {workdir!r}; available: {steps}")
        # An imported model's checkpoint holds parameters only (no optimizer state).
        opt_state = {} if run.config.data.source == "imported" else run.abstract_opt_state
        with run.context():
            return ckpt.restore(steps[-1] if step is None else step, run.abstract_params, opt_state)
    finally:
        ckpt.close()


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    runs.atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _excluded_ids(config, data, mode: str, exclude_set: str | None, exclude_count: int | None):
    if config.memsinks.method == "none" and mode != "train":
        raise ValueError(f"--memsinks_mode={mode!r} needs a MemSinks run; this run has config.memsinks.method='none'")
    if mode != "exclude":
        if exclude_set or exclude_count is not None:
            raise ValueError("--exclude_set/--exclude_count go with --memsinks_mode=exclude")
        return None
    if not exclude_set:
        raise ValueError("--memsinks_mode=exclude needs --exclude_set=<set whose sequences' sink units go>")
    ids = memsinks.set_ids(data, exclude_set)
    if exclude_count is not None:
        if not 1 <= exclude_count <= len(ids):
            raise ValueError(
                f"--exclude_count={exclude_count} must be in [1, {len(ids)}] (examples of {exclude_set!r})"
            )
        ids = ids[:exclude_count]
    return ids


def _extractability(
    run: core.Run, params, store, prompt_len: int, num_new: int, mode: str = "train", excluded=None
) -> pd.DataFrame:
    """k-extractability of every example with >= M + N real tokens, in batches from the feeder (MLP gates of a
    MemSinks run in ``mode``)."""
    # Examples are right-padded: the first M + N tokens are all real exactly when there are M + N of them.
    full_ids = np.asarray(store.example_ids)[store.token_counts(run.data.pad_id) >= prompt_len + num_new]
    with run.context():
        outputs = []
        for rows in run.feeder.set_rows(store, config_lib.eval_batch_size(run.config)):
            batch = run.feeder.batch(store, rows)
            outputs.append(
                extract.extractability(
                    run.graphdef,
                    params,
                    batch,
                    prompt_len,
                    num_new,
                    mlp_gate_BxF=core.sequence_gates(run, batch, mode, excluded),
                )
            )
    frames = []
    for result in jax.device_get(outputs):
        ids = result["example_ids_B"].astype(np.int64)
        keep = np.isin(ids, full_ids)  # padding rows (id -1) are never full
        frames.append(
            pd.DataFrame(
                {
                    "example_id": ids,
                    "score": result["score"],
                    "memorized": result["memorized"].astype(bool),
                    "prefix_match": result["prefix_match"],
                    "loss": result["loss"],
                }
            )[keep]
        )
    return pd.concat(frames, ignore_index=True)
