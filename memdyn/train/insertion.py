"""Insertion schedules for forgetting experiments (Tirumala et al. 2022, §forgetting).

A tracked set (default ``special``) is trained as extra updates before normal step S, ``repeats`` times in a row;
with ``every`` = m > 0 it is inserted again at S + m, S + 2m, ... (``times`` insertions in all: spaced
repetition). Inserted updates do not advance the example order: normal training resumes where it left off.
"""

from __future__ import annotations

from ml_collections import config_dict


def insertion_steps(insert: config_dict.ConfigDict, num_steps: int) -> list[int]:
    """Normal steps before which the set is inserted (empty when ``insert.at_step`` is None)."""
    if insert.at_step is None:
        return []
    if insert.at_step < 0 or insert.at_step >= num_steps:
        raise ValueError(f"config.insert.at_step={insert.at_step} must be in [0, num_steps={num_steps})")
    if insert.repeats < 1 or insert.times < 1 or insert.every < 0 or insert.eval_every < 1:
        raise ValueError(
            f"config.insert: repeats={insert.repeats} and times={insert.times} must be >= 1, "
            f"every={insert.every} >= 0, eval_every={insert.eval_every} >= 1"
        )
    if insert.times > 1 and insert.every == 0:
        raise ValueError(f"config.insert.times={insert.times} needs config.insert.every > 0 (spaced repetition)")
    steps = [insert.at_step + i * insert.every for i in range(insert.times)]
    return [s for s in steps if s < num_steps]


def evaluates_inserted_set(insert: config_dict.ConfigDict, first_insertion: int | None, steps_done: int) -> bool:
    """Whether the inserted set is evaluated after ``steps_done`` normal steps (every ``eval_every`` from S)."""
    return (
        first_insertion is not None
        and steps_done > first_insertion
        and (steps_done - first_insertion) % insert.eval_every == 0
    )


def insert_batch_size(num_examples: int, batch_size: int, shards: int) -> int:
    """Rows per inserted batch: the set in ceil(n / B) equal batches, rounded up to a multiple of ``shards`` (the
    data shards times the microbatches of gradient accumulation).

    Equal batches avoid one full batch followed by a nearly empty one whose few examples would get a whole
    update to themselves; the last batch is completed with padding rows, which count for nothing.
    """
    size = -(-num_examples // -(-num_examples // batch_size))
    return -(-size // shards) * shards
