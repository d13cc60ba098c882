"""Turning a run's data config into example stores (train and tracked sets) and a vocabulary.

``synthetic``: the embedded corpus (memdyn.data.corpus), generated in-process, one token per word.
``tfds`` / ``text`` / ``seqio``: a seqio Task (memdyn's over a TFDS dataset or local text files, or a registered
user Task) materialized by memdyn.data.materialize.
``store``: an existing store directory written by memdyn (its manifest carries the vocabulary).
All but ``store`` write <workdir>/data/{train,validation,control,special,...}; stores already there are reused
when their manifest matches the config. The ``special`` set (held-out examples for forgetting experiments) is the
last ``data.special_docs`` held-out documents, so it comes from the training distribution but is never in the
training order; the ``control`` set is the as many documents before them, never inserted, evaluated beside it to
separate forgetting from generalization.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
from ml_collections import config_dict

from memdyn.data import corpus as corpus_lib
from memdyn.data import materialize
from memdyn.data.store import ExampleStore, chunk_documents
from memdyn.data.tracked import Examples


@dataclasses.dataclass(frozen=True)
class RunData:
    train: ExampleStore
    sets: dict[str, ExampleStore]  # tracked sets by name ("validation", "special", ...)
    vocab: tuple[str, ...] | None  # id -> token text, when known
    vocab_size: int
    pad_id: int = corpus_lib.PAD_ID
    mask_id: int | None = corpus_lib.MASK_ID  # None: the vocabulary has no mask token (causal LMs only)
    num_special: int = corpus_lib.NUM_SPECIAL
    sentencepiece: str | None = None  # the SentencePiece model the ids come from, for decoding
    vocabulary: Any = None  # a user seqio task's vocabulary (anything with .decode(ids))

    def decode(self, token_ids: np.ndarray) -> str:
        ids = [int(t) for t in np.asarray(token_ids).reshape(-1) if t != self.pad_id]
        if self.vocabulary is not None:
            return self.vocabulary.decode(ids)
        if self.sentencepiece is not None:
            sp = _sentencepiece(self.sentencepiece)
            base = sp.get_piece_size()  # ids past it are extra ids (document identifiers), which have no text
            if all(i < base for i in ids):
                return sp.decode(ids)
            return " ".join(sp.decode([i]) if i < base else f"<id_{i - base}>" for i in ids)
        if self.vocab is None:
            return " ".join(str(i) for i in ids)
        return " ".join(self.vocab[i] for i in ids)


@functools.lru_cache(maxsize=4)
def _sentencepiece(path: str):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path)


def prepare(config: config_dict.ConfigDict, workdir: str) -> RunData:
    """Stores for the run in ``workdir``; builds them on first use."""
    if config.data.source == "store":
        return _open_existing(config.data.store)
    data_dir = os.path.join(workdir, "data")
    if config.data.source == "synthetic":
        _synthetic(config, data_dir)
    else:
        materialize.build(config, data_dir)
    return open_run_data(workdir, config)


def open_run_data(workdir: str, config: config_dict.ConfigDict) -> RunData:
    """The data of an existing run (no building)."""
    if config.data.source == "store":
        return _open_existing(config.data.store)
    data_dir = os.path.join(workdir, "data")
    data = _from_dir(data_dir, ExampleStore(os.path.join(data_dir, "train")), _open_sets(data_dir))
    if config.data.source == "seqio":
        data = dataclasses.replace(data, vocabulary=materialize.user_task_vocabulary(config.data))
    return data


def _from_dir(data_dir: str, train: ExampleStore, sets: dict[str, ExampleStore]) -> RunData:
    m = train.manifest
    vocab_txt, vocab_model = os.path.join(data_dir, "vocab.txt"), os.path.join(data_dir, "vocab.model")
    sentencepiece = vocab_model if os.path.exists(vocab_model) else None
    vocab = _read_vocab(vocab_txt) if os.path.exists(vocab_txt) else None
    return RunData(train=train, sets=sets, vocab=vocab, vocab_size=int(m["vocab_size"]),
                   pad_id=int(m.get("pad_id", corpus_lib.PAD_ID)),
                   mask_id=m.get("mask_id", corpus_lib.MASK_ID),
                   num_special=int(m.get("num_special", corpus_lib.NUM_SPECIAL)), sentencepiece=sentencepiece)


def _open_sets(data_dir: str) -> dict[str, ExampleStore]:
    return {name: ExampleStore(os.path.join(data_dir, name)) for name in sorted(os.listdir(data_dir))
            if name != "train" and os.path.isfile(os.path.join(data_dir, name, "manifest.json"))}


def _open_existing(path: str) -> RunData:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.data.store={path!r} does not exist")
    train = ExampleStore(path)
    if "vocab_size" not in train.manifest:
        raise ValueError(f"example store {path!r}: manifest.json has no vocab_size")
    return _from_dir(path, train, {})


def _synthetic(config: config_dict.ConfigDict, data_dir: str) -> None:
    fingerprint = materialize.data_fingerprint(config.data)
    if materialize.check_reusable(data_dir, fingerprint) is not None:
        return
    corpus = corpus_lib.generate(corpus_lib.CorpusConfig(**config.data.synthetic.to_dict()))
    manifest = {"source": "synthetic", "data": fingerprint, "vocab_size": len(corpus.vocab),
                "pad_id": corpus_lib.PAD_ID, "eos_id": corpus_lib.EOS_ID, "unk_id": corpus_lib.UNK_ID,
                "mask_id": corpus_lib.MASK_ID, "num_special": corpus_lib.NUM_SPECIAL,
                "tag_names": list(corpus_lib.POS_TAGS)}
    train, heldout = (_examples(docs, config.data.seq_len) for docs in (corpus.train, corpus.validation))
    heldout_sets = materialize.split_heldout(heldout, config.data.special_docs)
    os.makedirs(data_dir, exist_ok=True)
    _write_vocab(os.path.join(data_dir, "vocab.txt"), corpus.vocab)
    materialize.write_stores(data_dir, train, heldout_sets, config.data.tracked, manifest,
                             vocab_size=len(corpus.vocab))


def _examples(documents, seq_len: int) -> Examples:
    tokens, tags, doc_index = chunk_documents([(d.tokens, d.tags) for d in documents], seq_len, corpus_lib.PAD_ID)
    return Examples(tokens, np.asarray([documents[i].doc_id for i in doc_index], np.int64), tags)


def _write_vocab(path: str, vocab: tuple[str, ...]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(tmp, path)


def _read_vocab(path: str) -> tuple[str, ...]:
    with open(path) as f:
        return tuple(line.rstrip("\n") for line in f)
