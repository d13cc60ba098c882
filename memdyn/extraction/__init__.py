"""Scoring saved models: everything computed from a checkpoint rather than during training.

- ``extractability``: k-extractability (Biderman et al. 2023) with a KV-cache greedy decoder, and the one-pass
  teacher-forced quantities (memorized, prefix match, loss).
- ``extract_job``: ``memdyn extract``: every sequence of a set, a .npy array or GPT-NeoX indexed data, written in
  resumable parts.
- ``eval_checkpoint``: ``memdyn eval``: a tracked set at a checkpoint (and its k-extractability, MemSinks modes).
- ``import_hf``: ``memdyn import-hf``: a local Hugging Face GPT-NeoX (Pythia) checkpoint as a memdyn run.
"""
