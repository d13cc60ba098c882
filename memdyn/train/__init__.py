"""The training engine: ``memdyn train`` from a config to a finished run directory.

- ``job``: validate, build the data, build the run, train or resume, report (what the command does).
- ``steps``: the Run (model, optimizer, shardings, mesh) and its jitted train and evaluation steps, which compute
  the memorization metrics on the same logits; ``optimizer`` (AdamW and the schedule) and ``microbatches``
  (gradient accumulation) are its parts.
- ``loop``: the Trainer: the step loop, insertions of a special set, evaluations, checkpoints, preemption.
- ``metrics``, ``objective``: exact match and loss per token; the causal or masked-LM targets.
- ``evaluate``, ``insertion``: tracked-set evaluation; when a special set is inserted.
- ``checkpoint``: orbax checkpoints (exact resume, forks); ``results``, ``writers``, ``progress``: the CSVs,
  Parquet records and TensorBoard events a run writes, and progress lines; ``summary``: the dry run's summary.
"""
