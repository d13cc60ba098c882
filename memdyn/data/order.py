"""Step-indexed example order: the rows trained at step S are a pure function of (seed, S).

Each epoch is a fresh permutation of the store's rows, drawn from (seed, epoch). An epoch has
floor(N / B) steps; the N mod B rows left at the end of a permutation are skipped for that epoch (a different
random remainder each epoch). Resume, forking and ``memdyn rows`` therefore need no iterator state.
"""

from __future__ import annotations

import functools

import numpy as np


class StepOrder:
    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"config.batch_size={batch_size} must be positive")
        if num_examples < batch_size:
            raise ValueError(f"the training set has {num_examples} examples, fewer than config.batch_size="
                             f"{batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = num_examples // batch_size

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    @functools.lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        """Row order of ``epoch`` [N]."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def rows(self, step: int) -> np.ndarray:
        """Store rows of the global batch at ``step`` [B]."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative")
        start = (step % self.steps_per_epoch) * self.batch_size
        return self.permutation(self.epoch(step))[start:start + self.batch_size]
