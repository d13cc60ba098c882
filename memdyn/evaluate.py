"""Tracked-set evaluation: per-example loss and exact memorization M(f), jitted and sharded like the train step.

All batches of a set are dispatched before any result is fetched (no host round trip per batch); ``PendingEval``
holds the device arrays until the loop asks for them. Masked LMs are evaluated with masks drawn from a fixed key,
so successive evaluations of a set score the same positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from memdyn.data.store import ExampleStore

# Masks of evaluation batches come from fold_in(key(seed), EVAL_MASK_SALT + batch index), far from any train step.
EVAL_MASK_SALT = 2**30


def padded_batches(store: ExampleStore, batch_size: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The whole store as batches [B, L]; the last one is filled with all-padding rows, which count for nothing.

    Returns (tokens_BxL, example_ids_B, number_of_real_rows) per batch.
    """
    batches = []
    for start in range(0, store.num_examples, batch_size):
        rows = store.rows(np.arange(start, min(start + batch_size, store.num_examples)))
        n = len(rows["example_ids"])
        tokens = np.full((batch_size, store.seq_len), pad_id, np.int32)
        tokens[:n] = rows["tokens"]
        ids = np.full(batch_size, -1, np.int64)
        ids[:n] = rows["example_ids"]
        batches.append((tokens, ids, n))
    return batches


@dataclasses.dataclass
class PendingEval:
    """Device results of one evaluation; ``result()`` fetches them."""
    name: str
    step: int
    extra: dict[str, Any]
    outputs: list[tuple[dict[str, jax.Array], np.ndarray, int]]

    def result(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(aggregates, per-example arrays) with M = exact-match fraction over all counted tokens of the set."""
        fetched = jax.device_get([o[0] for o in self.outputs])
        per_example = {k: [] for k in ("example_id", "exact_match", "loss", "num_tokens")}
        for m, (_, ids, n) in zip(fetched, self.outputs):
            per_example["example_id"].append(ids[:n])
            per_example["exact_match"].append(m["exact_match_B"][:n])
            per_example["loss"].append(m["loss_B"][:n])
            per_example["num_tokens"].append(m["num_tokens_B"][:n])
        per_example = {k: np.concatenate(v) for k, v in per_example.items()}
        tokens = per_example["num_tokens"]
        total = max(float(tokens.sum()), 1.0)
        loss = float((per_example["loss"] * tokens).sum() / total)
        aggregates = {"exact_match": float((per_example["exact_match"] * tokens).sum() / total), "loss": loss,
                      "perplexity": float(np.exp(min(loss, 80.0))), "num_examples": len(tokens),
                      "num_tokens": int(tokens.sum())}
        return aggregates, per_example


def evaluate(eval_step: Callable, params: Any, batches: list, batch_sharding, name: str, step: int,
             **extra: Any) -> PendingEval:
    """Dispatches ``eval_step`` on every batch of a set; nothing is fetched here."""
    outputs = []
    for i, (tokens, ids, n) in enumerate(batches):
        device_tokens = jax.make_array_from_process_local_data(batch_sharding, tokens, global_shape=tokens.shape)
        outputs.append((eval_step(params, device_tokens, np.int32(EVAL_MASK_SALT + i)), ids, n))
    return PendingEval(name, step, extra, outputs)
