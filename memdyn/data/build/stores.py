"""The last part of every build: held-out documents split into sets, tracked sets planted, stores written.

``write_stores`` is the one place example stores of a run are written: every set, with example ids that
continue across sets (an example id is unique within a run), ``dup_counts`` for the training store, and
``membership.csv`` (which training rows are copies of which tracked example).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.data.build import tracked as tracked_lib
from memdyn.data.build.chunking import Examples
from memdyn.data.store import ExampleStore, write_store


def split_heldout(examples: Examples, special_docs: int) -> dict[str, Examples]:
    """validation / control / special by document, in document order (see memdyn.data.build)."""
    docs = list(dict.fromkeys(examples.doc_ids.tolist()))
    k = special_docs
    if not 0 <= 2 * k < len(docs):
        raise ValueError(f"config.data.special_docs={k}: twice it (special + control) must be below the "
                         f"{len(docs)} held-out documents")
    groups = {"validation": docs[:len(docs) - 2 * k]}
    if k:
        groups["control"], groups["special"] = docs[len(docs) - 2 * k:len(docs) - k], docs[len(docs) - k:]
    return {name: examples.take(np.flatnonzero(np.isin(examples.doc_ids, ids))) for name, ids in groups.items()}


def hold_out_tail(examples: Examples, num_docs: int) -> tuple[Examples, Examples]:
    """(train, held out): the last ``num_docs`` documents of a source without a validation split."""
    docs = list(dict.fromkeys(examples.doc_ids.tolist()))
    if not 0 < num_docs < len(docs):
        raise ValueError(f"config.data.validation_docs={num_docs}: the source has no validation split, so this "
                         f"many of its {len(docs)} training documents are held out; it must be in (0, {len(docs)})")
    held = np.isin(examples.doc_ids, docs[len(docs) - num_docs:])
    return examples.take(np.flatnonzero(~held)), examples.take(np.flatnonzero(held))


def write_stores(data_dir: str, train: Examples, heldout: dict[str, Examples], tracked, manifest: dict, *,
                 base_vocab_size: int) -> dict[str, ExampleStore]:
    """Plants the tracked sets (canary tokens drawn below ``base_vocab_size``), numbers the examples and writes
    every store and membership.csv."""
    next_doc = int(max(train.doc_ids.max(), *(s.doc_ids.max() for s in heldout.values()))) + 1
    planted = tracked_lib.plant(train, tracked, vocab_size=base_vocab_size, num_special=manifest["num_special"],
                                eos_id=manifest["eos_id"], pad_id=manifest["pad_id"], next_doc_id=next_doc)
    splits = {"train": planted.train, **heldout, **planted.sets}
    first_id, next_id = {}, 0
    for split, ex in splits.items():  # ids continue across sets so that an example id is unique within a run
        first_id[split], next_id = next_id, next_id + len(ex)
    rows = [(name, first_id["train"] + row, first_id[name] + index, int(planted.train.doc_ids[row]))
            for name, row, index in planted.membership]
    table = pd.DataFrame(rows, columns=["set", "example_id", "tracked_example_id", "doc_id"])
    runs.atomic_write(os.path.join(data_dir, "membership.csv"), lambda tmp: table.to_csv(tmp, index=False))
    written = {}
    for split in [*heldout, *planted.sets, "train"]:  # train last: its manifest marks the stores complete
        ex = splits[split]
        if os.path.exists(os.path.join(data_dir, split)):  # left by an interrupted build (train is absent)
            shutil.rmtree(os.path.join(data_dir, split))
        extra = {"dup_counts": tracked_lib.duplication_counts(ex.tokens)} if split == "train" else {}
        written[split] = write_store(os.path.join(data_dir, split), tokens=ex.tokens, tags=ex.tags,
                                     doc_ids=ex.doc_ids, example_ids=first_id[split] + np.arange(len(ex)),
                                     manifest=dict(manifest, split=split), **extra)
    return written
