"""Progress of a training run: clu's ``ReportProgress`` (steps/s and ETA, logged every few seconds), with the
latest loss and M_update beside it and the measured rate kept for the ``steps_per_sec`` column of train.csv; and a
line for every evaluation of a set (M(f) and loss) as it is recorded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from absl import logging
from clu import metric_writers, periodic_actions

import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)


class _RateWriter(metric_writers.MultiWriter):
    """Passes ReportProgress's scalars on (to TensorBoard) and keeps the last steps/s."""

    def __init__(self, writers: list[metric_writers.MetricWriter]):
        super().__init__(writers)
        self.steps_per_sec = math.nan

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.steps_per_sec = float(scalars.get("steps_per_sec", self.steps_per_sec))
        super().write_scalars(step, scalars)


class Progress:
    def __init__(self, num_steps: int, tensorboard: metric_writers.MetricWriter, every_secs: float = 5.0):
        self._writer = _RateWriter([tensorboard])
        self._report = periodic_actions.ReportProgress(
            num_train_steps=num_steps, writer=self._writer, every_secs=every_secs
        )

    def evaluated(
        self, step: int, name: str, exact_match: float, loss: float, at_insertion: str = "", sham: bool = False
    ) -> None:
        """One line per evaluation of a set, as it is recorded; at a step with an insertion the two evaluations
        of the inserted set say which is which (``at_insertion`` of eval.csv: "before" or "after"; ``sham``: the
        insertion of a sham fork, which inserts nothing)."""
        label = f"{name} ({at_insertion} {'sham ' if sham else ''}insertion)" if at_insertion else name
        logging.info("step %d: eval %s  M(f) %.4f  loss %.4f", step, label, exact_match, loss)

    def update(self, steps_done: int, loss: float, mem_update: float) -> float:
        """Call after each normal step; returns steps/s over the last reporting interval (NaN before the first)."""
        if self._report(steps_done):
            logging.info("step %d: loss %.4f  mem_update %.4f", steps_done, loss, mem_update)
        return self._writer.steps_per_sec
