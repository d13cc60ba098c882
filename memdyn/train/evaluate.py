"""Tracked-set evaluation: per-example loss and exact memorization M(f), jitted and sharded like the train step.

A set's batches come from the feeder (the last one completed with padding rows, example id -1, which count for
nothing). All batches are dispatched before any result is fetched (no host round trip per batch); ``PendingEval``
holds the device arrays until the loop asks for them. Masked LMs are evaluated with masks drawn from a fixed key,
so successive evaluations of a set score the same positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from memdyn.data.feeder import Feeder
from memdyn.data.store import ExampleStore

# Masks of evaluation batches come from fold_in(key(seed), EVAL_MASK_SALT + batch index), far from any train step.
EVAL_MASK_SALT = 2**30
PER_EXAMPLE = {
    "example_id": "example_ids_B",
    "exact_match": "exact_match_B",
    "loss": "loss_B",
    "num_tokens": "num_tokens_B",
}  # record column -> step output


@dataclasses.dataclass
class PendingEval:
    """Device results of one evaluation; ``result()`` fetches them."""

    name: str
    step: int
    extra: dict[str, Any]
    outputs: list[dict[str, jax.Array]]
    _cache: list[dict[str, np.ndarray]] | None = dataclasses.field(default=None, repr=False)

    def result(self, subset: str | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(aggregates, per-example arrays) with M = exact-match fraction over all counted tokens of the set, or
        over the positions of ``subset`` (one of ``subsets()``)."""
        fetched = self._fetched()
        real = [m["example_ids_B"] >= 0 for m in fetched]  # padding rows have id -1
        prefix = "" if subset is None else f"{subset}_"
        per_example = {
            column: np.concatenate(
                [m[key if column == "example_id" else prefix + key][r] for m, r in zip(fetched, real)]
            )
            for column, key in PER_EXAMPLE.items()
        }
        per_example["example_id"] = per_example["example_id"].astype(np.int64)
        per_example["num_tokens"] = per_example["num_tokens"].astype(np.int32)  # an int in every file
        tokens = per_example["num_tokens"]
        total = max(float(tokens.sum()), 1.0)
        loss = float((per_example["loss"] * tokens).sum() / total)
        aggregates = {
            "exact_match": float((per_example["exact_match"] * tokens).sum() / total),
            "loss": loss,
            "perplexity": float(np.exp(min(loss, 80.0))),
            "num_examples": len(tokens),
            "num_tokens": int(tokens.sum()),
        }
        return aggregates, per_example

    def subsets(self) -> list[str]:
        """Names of the position subsets the step also scored (``core.make_forward``: "content")."""
        fetched = self._fetched()
        suffix = "_exact_match_B"
        return sorted(
            k[: -len(suffix)] for k in (fetched[0] if fetched else {}) if k.endswith(suffix) and k != "exact_match_B"
        )

    def pos_counts(self) -> dict[str, np.ndarray]:
        """Per-tag counts (``memdyn.studies.pos.counts``) summed over the set's batches; empty when the step returns
        none."""
        fetched = self._fetched()
        keys = [k for k in fetched[0] if k.startswith("pos_")] if fetched else []
        return {k: np.sum([m[k] for m in fetched], axis=0) for k in keys}

    def _fetched(self) -> list[dict[str, np.ndarray]]:
        if self._cache is None:
            self._cache = jax.device_get(self.outputs)
        return self._cache


def evaluate(
    eval_step: Callable,
    params: Any,
    feeder: Feeder,
    store: ExampleStore,
    batch_size: int,
    name: str,
    step: int,
    **extra: Any,
) -> PendingEval:
    """Dispatches ``eval_step`` on every batch of ``store``; nothing is fetched here."""
    outputs = [
        eval_step(params, feeder.batch(store, rows), np.int32(EVAL_MASK_SALT + i))
        for i, rows in enumerate(feeder.set_rows(store, batch_size))
    ]
    return PendingEval(name, step, extra, outputs)
