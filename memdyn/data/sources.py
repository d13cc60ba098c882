"""Turning a run's data config into example stores (train and validation) and a vocabulary.

``synthetic``: the embedded corpus (memdyn.data.corpus) is generated, cut into examples and written to
<workdir>/data/{train,validation,special}; a store already there is reused when its manifest matches the config.
The ``special`` set (held-out examples for forgetting experiments) is the last ``data.special_docs`` validation
documents, so it comes from the training distribution but is never in the training order; the ``control`` set is
the as many documents before them, never inserted, evaluated beside it to separate forgetting from generalization.
``store``: an existing store directory written by memdyn (its manifest carries the vocabulary size).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from ml_collections import config_dict

from memdyn.data import corpus as corpus_lib
from memdyn.data.store import ExampleStore, chunk_documents, write_store


@dataclasses.dataclass(frozen=True)
class RunData:
    train: ExampleStore
    sets: dict[str, ExampleStore]  # tracked sets by name ("validation", "special", ...)
    vocab: tuple[str, ...] | None  # id -> token text, when known
    vocab_size: int
    pad_id: int = corpus_lib.PAD_ID
    mask_id: int = corpus_lib.MASK_ID
    num_special: int = corpus_lib.NUM_SPECIAL

    def decode(self, token_ids: np.ndarray) -> str:
        if self.vocab is None:
            return " ".join(str(int(t)) for t in token_ids if t != self.pad_id)
        return " ".join(self.vocab[int(t)] for t in token_ids if t != self.pad_id)


def prepare(config: config_dict.ConfigDict, workdir: str) -> RunData:
    """Stores for the run in ``workdir``; builds them on first use."""
    if config.data.source == "store":
        return _open_existing(config.data.store)
    return _synthetic(config, os.path.join(workdir, "data"))


def open_run_data(workdir: str, config: config_dict.ConfigDict) -> RunData:
    """The data of an existing run (no building)."""
    if config.data.source == "store":
        return _open_existing(config.data.store)
    data_dir = os.path.join(workdir, "data")
    train = ExampleStore(os.path.join(data_dir, "train"))
    return RunData(train=train, sets=_open_sets(data_dir), vocab=_read_vocab(os.path.join(data_dir, "vocab.txt")),
                   vocab_size=int(train.manifest["vocab_size"]))


def _open_sets(data_dir: str) -> dict[str, ExampleStore]:
    return {name: ExampleStore(os.path.join(data_dir, name)) for name in sorted(os.listdir(data_dir))
            if name != "train" and os.path.isfile(os.path.join(data_dir, name, "manifest.json"))}


def _open_existing(path: str) -> RunData:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.data.store={path!r} does not exist")
    train = ExampleStore(path)
    if "vocab_size" not in train.manifest:
        raise ValueError(f"example store {path!r}: manifest.json has no vocab_size")
    vocab_path = os.path.join(path, "vocab.txt")
    return RunData(train=train, sets={}, vocab=_read_vocab(vocab_path) if os.path.exists(vocab_path) else None,
                   vocab_size=int(train.manifest["vocab_size"]))


def _synthetic(config: config_dict.ConfigDict, data_dir: str) -> RunData:
    corpus_config = corpus_lib.CorpusConfig(**config.data.synthetic.to_dict())
    manifest = {"source": "synthetic", "corpus": dataclasses.asdict(corpus_config), "seq_len": config.data.seq_len,
                "special_docs": config.data.special_docs}
    train_dir = os.path.join(data_dir, "train")
    vocab_path = os.path.join(data_dir, "vocab.txt")
    if os.path.exists(os.path.join(train_dir, "manifest.json")):
        train = ExampleStore(train_dir)
        stored = {k: train.manifest.get(k) for k in manifest}
        if json.loads(json.dumps(stored)) != json.loads(json.dumps(manifest)):
            raise ValueError(f"the example store in {data_dir!r} was built from a different data config "
                             f"({stored}); use a new --workdir")
        return RunData(train, _open_sets(data_dir), _read_vocab(vocab_path), int(train.manifest["vocab_size"]))

    corpus = corpus_lib.generate(corpus_config)
    if not 0 <= 2 * config.data.special_docs < len(corpus.validation):
        raise ValueError(f"config.data.special_docs={config.data.special_docs}: twice it (special + control) must "
                         f"be below the {len(corpus.validation)} validation documents "
                         "(data.synthetic.num_validation_docs)")
    manifest["vocab_size"] = len(corpus.vocab)
    k, held_out = config.data.special_docs, corpus.validation
    split_docs = {"train": corpus.train, "validation": held_out[:len(held_out) - 2 * k]}
    if k:  # the special set, and a control set of as many held-out documents that is never inserted
        split_docs["control"] = held_out[len(held_out) - 2 * k:len(held_out) - k]
        split_docs["special"] = held_out[len(held_out) - k:]
    stores, next_id = {}, 0
    for split, documents in split_docs.items():
        tokens, tags, doc_index = chunk_documents([(d.tokens, d.tags) for d in documents], config.data.seq_len,
                                                  corpus_lib.PAD_ID)
        doc_ids = np.asarray([documents[i].doc_id for i in doc_index], np.int64)
        # Ids continue across sets so that an example id is unique within a run.
        stores[split] = write_store(os.path.join(data_dir, split), tokens=tokens, tags=tags, doc_ids=doc_ids,
                                    example_ids=next_id + np.arange(len(tokens)),
                                    manifest=dict(manifest, split=split, tag_names=list(corpus_lib.POS_TAGS)))
        next_id += len(tokens)
    _write_vocab(vocab_path, corpus.vocab)
    train = stores.pop("train")
    return RunData(train, stores, tuple(corpus.vocab), len(corpus.vocab))


def _write_vocab(path: str, vocab: tuple[str, ...]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(tmp, path)


def _read_vocab(path: str) -> tuple[str, ...]:
    with open(path) as f:
        return tuple(line.rstrip("\n") for line in f)
