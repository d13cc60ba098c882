"""``memdyn eval``: a tracked set (or the training set) evaluated at a saved checkpoint.

Writes, under <workdir>/evals/:
  <set>-<step>.csv          per example: example_id, exact_match, loss, num_tokens (M(f) and loss per example)
  <set>-<step>-extract.csv  with --extract (causal LMs): example_id, score, memorized, prefix_match — Biderman et
                            al.'s k-extractability with a prompt of M tokens and N greedy tokens; examples with
                            fewer than M + N real tokens are left out (their continuation would be padding)
and returns the aggregates (exact_match, loss, perplexity, extractable fraction).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import pandas as pd

from memdyn import checkpoint, config as config_lib, core, evaluate, extract
from memdyn.data import sources


def _atomic_csv(frame: pd.DataFrame, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def evaluate_checkpoint(workdir: str, set_name: str, step: int | None = None, *, extract_k: bool = False,
                        prompt_len: int = 32, num_new: int = 32) -> dict[str, Any]:
    config = config_lib.load_run_config(workdir)
    data = sources.open_run_data(workdir, config)
    stores = {"train": data.train, **data.sets}
    if set_name not in stores:
        raise ValueError(f"--set={set_name!r} is not a set of this run; sets: {sorted(stores)}")
    store = stores[set_name]
    if extract_k and not config.model.causal:
        raise ValueError("--extract needs a causal LM; this run trains a masked LM (config.model.causal=False)")
    if extract_k and store.seq_len < prompt_len + num_new:
        raise ValueError(f"--extract needs examples of at least prompt_len + num_new = {prompt_len + num_new} "
                         f"tokens; this run's examples have {store.seq_len}")
    run = core.build_run(config, data)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        steps = ckpt.steps()
        if not steps or (step is not None and step not in steps):
            raise ValueError(f"--step={step}: no such checkpoint in {workdir!r}; available: {steps}")
        with run.context():
            restored = ckpt.restore(steps[-1] if step is None else step, run.abstract_params,
                                    run.abstract_opt_state)
    finally:
        ckpt.close()
    out_dir = os.path.join(workdir, "evals")
    os.makedirs(out_dir, exist_ok=True)
    batches = evaluate.padded_batches(store, config.batch_size, data.pad_id)
    with run.context():
        aggregates, per_example = evaluate.evaluate(core.make_eval_step(run), restored.params, batches,
                                                    run.batch_sharding, set_name, restored.step).result()
    aggregates = {"set": set_name, "step": restored.step, **aggregates}
    _atomic_csv(pd.DataFrame(per_example), os.path.join(out_dir, f"{set_name}-{restored.step}.csv"))
    if extract_k:
        frame = _extractability(run, restored.params, batches, prompt_len, num_new, data.pad_id)
        _atomic_csv(frame, os.path.join(out_dir, f"{set_name}-{restored.step}-extract.csv"))
        aggregates.update(extract_examples=len(frame), memorized_fraction=float(frame["memorized"].mean()),
                          mean_score=float(frame["score"].mean()))
    return aggregates


def _extractability(run: core.Run, params, batches, prompt_len: int, num_new: int, pad_id: int) -> pd.DataFrame:
    """k-extractability of every example with ≥ M + N real tokens, batched like the evaluation."""
    rows = []
    with run.context():
        outputs = []
        for tokens, ids, n in batches:
            window = tokens[:, :prompt_len + num_new]
            device_tokens = jax.device_put(window, run.batch_sharding)
            outputs.append((extract.extractability(run.graphdef, params, device_tokens, prompt_len, num_new),
                            window, ids, n))
        for result, window, ids, n in outputs:
            result = jax.device_get(result)
            full = (window[:n] != pad_id).all(axis=1)
            rows.append(pd.DataFrame({"example_id": ids[:n], "score": result["score"][:n],
                                      "memorized": result["memorized"][:n].astype(bool),
                                      "prefix_match": result["prefix_match"][:n]})[full])
    return pd.concat(rows, ignore_index=True)
