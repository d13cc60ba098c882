"""Memorization Sinks (Ghosal et al. 2025) at CPU scale on the embedded corpus: general data mixed with a few
sequences each repeated many times, and never-seen sequences from the same distribution.

The argument names the condition (default ``memsinks``); every condition trains the same SwiGLU model on the
same data order:
  standard   plain training
  memsinks   sequence-tied sink neurons (config.memsinks.method='sinks', the paper's masks)
  shared     Section 4's baseline: one shared sink region, repeated rows update only it (gradient masking)
  dedup      plain training with every repeated sequence kept once (config.data.tracked.duplicate_count=1)
  placebo    the same pool and p_mem with ids drawn afresh for every update and row (not tied to the sequence)

Sets: ``duplicates`` (the repeated sequences, one copy each), ``control`` (never-seen sequences: held-out
documents, as many as are repeated), ``validation`` (general held-out data). MemSinks runs also evaluate every set
with the sinks dropped (``<set>@dropout``) and at the pool's expected activation (``<set>@all``).

    memdyn train --config=configs/memsinks.py:memsinks --workdir=runs/memsinks/seed=0/memsinks
    memdyn train --config=configs/memsinks.py:standard --workdir=runs/memsinks/seed=0/standard

``launch/memsinks.py`` runs every condition for several seeds, the per-id deletions, and the analysis.
"""

from memdyn.configs import base

CONDITIONS = ("standard", "memsinks", "shared", "dedup", "placebo")


def get_config(condition: str = "memsinks"):
    if condition not in CONDITIONS:
        raise ValueError(f"configs/memsinks.py:{condition}: expected one of {CONDITIONS}")
    c = base.get_config()
    c.model.size = "tiny"
    c.model.mlp = "swiglu"  # the authors' MLP
    c.data.seq_len = 128  # most documents (48-160 tokens) are one sequence
    c.data.synthetic.num_train_docs = 4000
    c.data.special_docs = 8  # `control`: 8 never-seen documents (and `special`, unused here)
    c.data.tracked.duplicated_docs = 8  # the repeated sequences: 8 training documents ...
    c.data.tracked.duplicate_count = 128  # ... each occurring this many times in an epoch (the paper's 128)
    c.num_steps = 208  # one epoch (6,641 rows at batch 32): each repeated sequence is trained 128 times
    c.batch_size = 32
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 30
    c.eval.every = 25
    c.eval.sets = ("validation", "duplicates", "control")
    c.eval.epoch_sets = ()  # the analysis reads the tracked sets, not M(f) of the training set
    c.eval.every_epochs = 0
    c.checkpoint.every = 0  # the last step is saved (per-id deletion evaluates it)
    c.memsinks.p_gen = 0.7  # the third-party port's values (papers' notes)
    c.memsinks.p_mem = 0.3
    if condition in ("memsinks", "shared", "placebo"):
        c.memsinks.method = "shared" if condition == "shared" else "sinks"
        c.eval.memsinks_modes = ("dropout",) if condition == "shared" else ("dropout", "all")
    if condition == "placebo":
        c.memsinks.ids = "placebo"
    if condition == "dedup":
        c.data.tracked.duplicate_count = 1
    return c
