"""Step-indexed example order: the rows trained at step S are a pure function of (seed, S).

Each epoch is a fresh permutation of the store's N rows, drawn from (seed, epoch), cut into ceil(N / B)
consecutive batches whose sizes differ by at most one (e.g. N = 439, B = 32: 14 batches, five of 32 and nine of
31). A batch smaller than B is completed with padding rows (``PADDING_ROW``), which count for nothing. So every
example is trained exactly once per epoch, and "epochs completed" is "times trained". Resume, forking and
``memdyn rows`` need no iterator state.
"""

from __future__ import annotations

import functools

import numpy as np

PADDING_ROW = -1  # in a row list: a row of padding, which counts for nothing


def equal_batch_bounds(num_examples: int, num_batches: int) -> np.ndarray:
    """Start offsets [num_batches + 1] of ``num_batches`` consecutive batches whose sizes differ by at most one
    (the larger ones first)."""
    base, extra = divmod(num_examples, num_batches)
    k = np.arange(num_batches + 1)
    return k * base + np.minimum(k, extra)


class StepOrder:
    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"config.batch_size={batch_size} must be positive")
        if num_examples < batch_size:  # every step would be the whole set plus padding: surely a mistake
            raise ValueError(f"the training set has {num_examples} examples, fewer than config.batch_size={batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = -(-num_examples // batch_size)
        self._bounds = equal_batch_bounds(num_examples, self.steps_per_epoch)

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    @functools.lru_cache(maxsize=4)  # noqa: B019 (an order lives as long as its run; 4 epochs cached)
    def permutation(self, epoch: int) -> np.ndarray:
        """Row order of ``epoch`` [N]."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def rows(self, step: int) -> np.ndarray:
        """Store rows of the global batch at ``step`` [B], ``PADDING_ROW`` after the batch's real rows."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        k = step % self.steps_per_epoch
        real = self.permutation(self.epoch(step))[self._bounds[k] : self._bounds[k + 1]]
        rows = np.full(self.batch_size, PADDING_ROW, np.int64)
        rows[: len(real)] = real
        return rows

    def examples_seen(self, steps_done: int) -> int:
        """Real examples trained in the first ``steps_done`` normal steps."""
        epochs, k = divmod(steps_done, self.steps_per_epoch)
        return epochs * self.num_examples + int(self._bounds[k])
