"""A run's data as training reads it: the example stores of <workdir>/data/ (built by memdyn.data.build) or of
``config.data.store``, their vocabulary size and special ids, and decoding back to text."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from ml_collections import config_dict

from memdyn.data import vocab as vocab_lib
from memdyn.data.store import ExampleStore


@dataclasses.dataclass(frozen=True)
class RunData:
    train: ExampleStore | None  # None: a model without training data (config.data.source='imported')
    sets: dict[str, ExampleStore]  # tracked sets by name ("validation", "special", ...)
    words: tuple[str, ...] | None  # id -> word, for a word-list vocabulary (the synthetic corpus)
    vocab_size: int
    pad_id: int = vocab_lib.PAD_ID
    mask_id: int | None = vocab_lib.MASK_ID  # None: the vocabulary has no mask token (causal LMs only)
    num_special: int = vocab_lib.NUM_SPECIAL
    sentencepiece: str | None = None  # the SentencePiece model the ids come from, for decoding
    vocabulary: Any = None  # a user seqio task's vocabulary (anything with .decode(ids))

    def evaluable(self) -> dict[str, ExampleStore]:
        """Every store a run can evaluate by name: ``train`` (the whole training set) and the tracked sets."""
        return {"train": self.train, **self.sets} if self.train is not None else dict(self.sets)

    def decode(self, token_ids: np.ndarray) -> str:
        ids = [int(t) for t in np.asarray(token_ids).reshape(-1) if t != self.pad_id]
        return vocab_lib.decode(ids, words=self.words, sentencepiece=self.sentencepiece, vocabulary=self.vocabulary)


def open_run_data(workdir: str, config: config_dict.ConfigDict) -> RunData:
    """The data of a run whose stores exist (nothing is built)."""
    if config.data.source == "imported":  # a model without data (memdyn import-hf): only what extract reads
        return RunData(train=None, sets={}, words=None, vocab_size=int(config.model.vocab_size), mask_id=None)
    if config.data.source == "store":
        return _open_store(config.data.store)
    data_dir = os.path.join(workdir, "data")
    data = _from_dir(data_dir, ExampleStore(os.path.join(data_dir, "train")), _open_sets(data_dir))
    if config.data.source == "seqio":
        from memdyn.data.build import sources  # imports the user's task module

        data = dataclasses.replace(data, vocabulary=sources.user_task_vocabulary(config.data))
    return data


def _from_dir(data_dir: str, train: ExampleStore, sets: dict[str, ExampleStore]) -> RunData:
    m = train.manifest
    words_txt, model = os.path.join(data_dir, "vocab.txt"), os.path.join(data_dir, "vocab.model")
    return RunData(
        train=train,
        sets=sets,
        words=vocab_lib.read_words(words_txt) if os.path.exists(words_txt) else None,
        vocab_size=int(m["vocab_size"]),
        pad_id=int(m.get("pad_id", vocab_lib.PAD_ID)),
        mask_id=m.get("mask_id", vocab_lib.MASK_ID),
        num_special=int(m.get("num_special", vocab_lib.NUM_SPECIAL)),
        sentencepiece=model if os.path.exists(model) else None,
    )


def _open_sets(data_dir: str) -> dict[str, ExampleStore]:
    return {
        name: ExampleStore(os.path.join(data_dir, name))
        for name in sorted(os.listdir(data_dir))
        if name != "train" and os.path.isfile(os.path.join(data_dir, name, "manifest.json"))
    }


def _open_store(path: str) -> RunData:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.data.store={path!r} does not exist")
    train = ExampleStore(path)
    if "vocab_size" not in train.manifest:
        raise ValueError(f"example store {path!r}: manifest.json has no vocab_size")
    return _from_dir(path, train, {})
