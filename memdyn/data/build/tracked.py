"""Tracked sets planted in the training data: canaries and duplicated documents, with their membership recorded.

``canaries``: ``num`` random token sequences (``length`` ids drawn uniformly from the non-special vocabulary, then
EOS), each inserted ``repeats`` times into training. ``duplicates``: ``docs`` training documents, every example of
each repeated so that it occurs ``count`` times in all. Each set is also stored once, as a tracked set evaluated by
name; ``membership`` says which training rows are copies of which tracked example.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memdyn.data.build.chunking import Examples


@dataclasses.dataclass
class Planted:
    train: Examples  # the training examples with the copies appended
    sets: dict[str, Examples]  # "canaries" / "duplicates": one copy of each planted example
    # For every appended or original training row that belongs to a set: (set name, train row, row in the set).
    membership: list[tuple[str, int, int]]


def plant(train: Examples, tracked, *, vocab_size: int, num_special: int, eos_id: int, pad_id: int,
          next_doc_id: int) -> Planted:
    """Adds the canaries and duplicates of config ``tracked`` (config.data.tracked) to ``train``."""
    rng = np.random.default_rng([int(tracked.seed), 0x747263])
    seq_len = train.tokens.shape[1]
    parts, sets, membership = [train], {}, []
    n = len(train)

    if tracked.duplicated_docs:
        if tracked.duplicate_count < 1:  # 1: the documents are tracked but not repeated (a deduplication control)
            raise ValueError(f"config.data.tracked.duplicate_count={tracked.duplicate_count} must be at least 1")
        doc_ids = np.unique(train.doc_ids)
        if tracked.duplicated_docs > len(doc_ids):
            raise ValueError(f"config.data.tracked.duplicated_docs={tracked.duplicated_docs} exceeds the "
                             f"{len(doc_ids)} training documents")
        chosen = np.sort(rng.choice(doc_ids, size=tracked.duplicated_docs, replace=False))
        rows = np.flatnonzero(np.isin(train.doc_ids, chosen))
        sets["duplicates"] = train.take(rows)
        membership += [("duplicates", int(r), i) for i, r in enumerate(rows)]
        for _ in range(tracked.duplicate_count - 1):
            parts.append(train.take(rows))
            membership += [("duplicates", n + i, i) for i in range(len(rows))]
            n += len(rows)

    if tracked.canaries:
        if not 1 <= tracked.canary_length < seq_len:
            raise ValueError(f"config.data.tracked.canary_length={tracked.canary_length} must be in [1, "
                             f"config.data.seq_len={seq_len}) (a canary is its tokens and EOS)")
        if tracked.canary_repeats < 1:
            raise ValueError(f"config.data.tracked.canary_repeats={tracked.canary_repeats} must be positive")
        tokens = np.full((tracked.canaries, seq_len), pad_id, np.int32)
        tokens[:, :tracked.canary_length] = rng.integers(num_special, vocab_size,
                                                         (tracked.canaries, tracked.canary_length))
        tokens[:, tracked.canary_length] = eos_id
        tags = None if train.tags is None else np.zeros_like(tokens, np.int8)
        canaries = Examples(tokens, next_doc_id + np.arange(tracked.canaries, dtype=np.int64), tags)
        sets["canaries"] = canaries
        for _ in range(tracked.canary_repeats):
            parts.append(canaries)
            membership += [("canaries", n + i, i) for i in range(tracked.canaries)]
            n += tracked.canaries
    return Planted(Examples.concat(parts), sets, membership)


def duplication_counts(tokens_NxL: np.ndarray) -> np.ndarray:
    """How many rows of ``tokens_NxL`` equal each row, int32 [N] (1: unique)."""
    _, inverse, counts = np.unique(tokens_NxL, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)].astype(np.int32)
