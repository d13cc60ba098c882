"""Orbax checkpoints of a run: params, optimizer state and the loop's counters, restorable onto any mesh.

A checkpoint named S holds the state after S normal training steps (plus any inserted updates before step S).
Beside the arrays it stores ``meta`` (JSON): the counters (step, update, tokens_seen), the number of rows of each
result CSV and the per-example Parquet parts that existed at save time — resume truncates the result files back
to exactly that, so the final files equal an uninterrupted run's — and the run's resolved config.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a process killed in
the middle of a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers


@dataclasses.dataclass
class Restored:
    step: int
    params: Any
    opt_state: Any
    meta: dict[str, Any]


class Checkpointer:
    """Saves (asynchronously) and restores the train state of one run directory."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 2,
        keep_steps: tuple[int, ...] = (),
        async_save: bool = True,
        read_only: bool = False,
        every: int = 0,
        save_steps: tuple[int, ...] = (),
    ):
        """Keeps the newest ``keep`` checkpoints and the ``keep_steps``; ``should_save`` says yes every ``every``
        steps (0: never) and at the ``save_steps`` (orbax's save-decision policies)."""
        self.directory = os.path.abspath(directory)
        preservation = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(keep), checkpoint_managers.CustomSteps(list(keep_steps))]
        )
        decisions = [checkpoint_managers.SpecificStepsPolicy(tuple(save_steps) + tuple(keep_steps))]
        if every > 0:
            decisions.append(checkpoint_managers.FixedIntervalPolicy(every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            save_decision_policy=checkpoint_managers.AnySavePolicy(decisions),
            # the decision must not depend on whether an earlier asynchronous save is still being written
            enable_should_save_is_saving_in_progress_check=False,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def should_save(self, step: int) -> bool:
        """Whether checkpoint ``step`` is due (never twice, never below the newest one)."""
        return self.manager.should_save(step)

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        """Starts saving checkpoint ``step``; returns once the arrays are copied off the device."""
        self.manager.save(
            step,
            force=True,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}), meta=ocp.args.JsonSave(meta)
            ),
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> Restored:
        """Checkpoint ``step`` placed in the shardings that the abstract trees carry (any mesh)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"params": abstract_params, "opt_state": abstract_opt_state}),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step, restored["state"]["params"], restored["state"]["opt_state"], dict(restored["meta"]))

    def restore_latest(
        self, abstract_params: Any, abstract_opt_state: Any, at_most: int | None = None
    ) -> Restored | None:
        """The newest checkpoint (≤ ``at_most``) that restores; unreadable ones are skipped with a warning."""
        for step in reversed(self.steps()):
            if at_most is not None and step > at_most:
                continue
            try:
                return self.restore(step, abstract_params, abstract_opt_state)
            except Exception as e:  # a corrupt or partial directory: fall back to the one before
                logging.warning("%s", skipped_line(os.path.join(self.directory, str(step)), e))
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def skipped_line(step_dir: str, error: BaseException, limit: int = 200) -> str:
    """The one-line warning for a checkpoint that does not restore: its step directory, the reason in a sentence
    and the first line of the error (cut to ``limit`` characters), not TensorStore's multi-line repr of its spec."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"skipping checkpoint {step_dir}: it could not be restored, its files are corrupt or incomplete ({detail})"


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree``'s leaves carrying ``shardings`` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
