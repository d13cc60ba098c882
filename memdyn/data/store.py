"""The example store: fixed-length token examples on disk, memory-mapped for random access.

A store directory holds
  tokens.npy       int32 [N, L]   token ids, right-padded with the pad id
  example_ids.npy  int64 [N]      stable id of each example (what every per-example record refers to)
  doc_ids.npy      int64 [N]      id of the document the example was cut from (copies share it)
  tags.npy         int8  [N, L]   optional per-token tags (parts of speech; names in manifest "tag_names")
  dup_counts.npy   int32 [N]      optional: how many rows of the store hold the same tokens (1: unique)
  seq_ids.npy      int32 [N, L]   optional: the sequence of every token, for rows packing several documents
  sequence_ids.npy int32 [N]      without seq_ids, when the manifest names the pad id: the id of each row's one
                                  sequence, a hash of its real tokens (``sequence_ids``), computed once here and
                                  read at feed time; a store written before it hashes its rows once when asked
  manifest.json    what was stored: source, vocabulary, counts, content hash
It is written to a temporary directory and renamed into place, so a store is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from absl import logging

from memdyn.rundir import runs

_ARRAYS = ("tokens", "example_ids", "doc_ids", "tags", "dup_counts", "seq_ids")  # the content hash's arrays


class ExampleStore:
    """Read access to a store directory; arrays are memory-mapped, never loaded whole."""

    def __init__(self, path: str):
        self.path = path
        manifest_path = os.path.join(path, "manifest.json")
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"example store {path!r} is missing or incomplete (no manifest.json)")
        with open(manifest_path) as f:
            self.manifest: dict[str, Any] = json.load(f)
        self.tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
        self.example_ids = np.load(os.path.join(path, "example_ids.npy"), mmap_mode="r")
        self.doc_ids = np.load(os.path.join(path, "doc_ids.npy"), mmap_mode="r")
        tags_path = os.path.join(path, "tags.npy")
        self.tags = np.load(tags_path, mmap_mode="r") if os.path.exists(tags_path) else None
        counts_path = os.path.join(path, "dup_counts.npy")
        self.dup_counts = np.load(counts_path, mmap_mode="r") if os.path.exists(counts_path) else None
        seq_ids_path = os.path.join(path, "seq_ids.npy")
        self.seq_ids = np.load(seq_ids_path, mmap_mode="r") if os.path.exists(seq_ids_path) else None
        hashed_path = os.path.join(path, "sequence_ids.npy")
        self._sequence_ids = None  # (pad id, ids [N]): the stored column, or computed on first use
        if os.path.exists(hashed_path):
            self._sequence_ids = (self.manifest.get("sequence_ids_pad_id"), np.load(hashed_path, mmap_mode="r"))
        if self.tokens.ndim != 2 or self.tokens.shape[0] == 0:
            raise ValueError(f"example store {path!r} is empty (tokens shape {self.tokens.shape})")

    @property
    def num_examples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Examples at row ``indices`` [B]: tokens [B, L], example_ids [B], doc_ids [B] (and tags [B, L],
        dup_counts [B] when stored)."""
        indices = np.asarray(indices)
        out = {
            "tokens": np.asarray(self.tokens[indices]),
            "example_ids": np.asarray(self.example_ids[indices]),
            "doc_ids": np.asarray(self.doc_ids[indices]),
        }
        if self.tags is not None:
            out["tags"] = np.asarray(self.tags[indices])
        if self.dup_counts is not None:
            out["dup_counts"] = np.asarray(self.dup_counts[indices])
        if self.seq_ids is not None:
            out["seq_ids"] = np.asarray(self.seq_ids[indices])
        return out

    def token_counts(self, pad_id: int) -> np.ndarray:
        """Non-pad tokens of every row, int64 [N]; computed once, in chunks so the store is never loaded whole."""
        if getattr(self, "_token_counts", None) is None or self._token_counts[0] != pad_id:
            counts = np.concatenate(
                [
                    np.count_nonzero(self.tokens[i : i + 65536] != pad_id, axis=1)
                    for i in range(0, self.num_examples, 65536)
                ]
            ).astype(np.int64)
            self._token_counts = (pad_id, counts)
        return self._token_counts[1]

    def sequence_ids(self, pad_id: int) -> np.ndarray:
        """Each row's sequence id, int32 [N] (``sequence_ids`` of its tokens): the column written with the store,
        or, in a store written before it (or hashed with another pad id), computed once, in chunks."""
        if self._sequence_ids is None or self._sequence_ids[0] != pad_id:
            logging.info(
                "example store %s has no sequence_ids.npy for pad id %d (a store written before they were kept): "
                "hashing its %d rows once, in memory",
                self.path,
                pad_id,
                self.num_examples,
            )
            ids = np.concatenate(
                [sequence_ids(self.tokens[i : i + 65536], pad_id) for i in range(0, self.num_examples, 65536)]
            )
            self._sequence_ids = (pad_id, ids)
        return self._sequence_ids[1]

    def row_of_example(self) -> dict[int, int]:
        return {int(e): i for i, e in enumerate(self.example_ids)}


def write_store(
    path: str,
    *,
    tokens: np.ndarray,
    example_ids: np.ndarray,
    doc_ids: np.ndarray,
    tags: np.ndarray | None = None,
    dup_counts: np.ndarray | None = None,
    seq_ids: np.ndarray | None = None,
    manifest: dict[str, Any] | None = None,
) -> ExampleStore:
    """Writes a store atomically (temporary directory, then rename) and opens it."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"refusing to write an empty example store to {path!r} (tokens shape {tokens.shape})")
    arrays = {
        "tokens": tokens,
        "example_ids": np.asarray(example_ids, np.int64),
        "doc_ids": np.asarray(doc_ids, np.int64),
    }
    if tags is not None:
        arrays["tags"] = np.asarray(tags, np.int8)
    if dup_counts is not None:
        arrays["dup_counts"] = np.asarray(dup_counts, np.int32)
    if seq_ids is not None:
        if np.shape(seq_ids) != tokens.shape:
            raise ValueError(f"seq_ids of store {path!r} have shape {np.shape(seq_ids)}, tokens {tokens.shape}")
        arrays["seq_ids"] = np.asarray(seq_ids, np.int32)
    pad_id = (manifest or {}).get("pad_id")
    hashed = {} if seq_ids is not None or pad_id is None else {"sequence_ids": sequence_ids(tokens, int(pad_id))}
    for name, array in arrays.items():
        if array.shape[0] != tokens.shape[0]:
            raise ValueError(f"{name} has {array.shape[0]} rows but tokens has {tokens.shape[0]}")
    if len(np.unique(arrays["example_ids"])) != tokens.shape[0]:
        raise ValueError(f"example ids of store {path!r} are not unique")
    digest = hashlib.sha256()
    for name in _ARRAYS:
        if name in arrays:
            digest.update(arrays[name].tobytes())
    manifest = dict(
        manifest or {}, num_examples=int(tokens.shape[0]), seq_len=int(tokens.shape[1]), sha256=digest.hexdigest()
    )
    if hashed:  # derived from the tokens: not part of the content hash
        manifest["sequence_ids_pad_id"] = int(pad_id)

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".store-", dir=parent)
    try:
        os.chmod(staging, runs.plain_mode(directory=True))  # as os.makedirs would make it, not mkdtemp's 0700
        for name, array in {**arrays, **hashed}.items():
            np.save(os.path.join(staging, f"{name}.npy"), array)
        with open(os.path.join(staging, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(path):
            raise FileExistsError(f"example store {path!r} already exists; not overwriting it")
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExampleStore(path)


def sequence_ids(tokens_NxL: np.ndarray, pad_id: int) -> np.ndarray:
    """The id of each row's sequence: a hash of its real (non-pad) tokens, int32 in [1, 2**31) [N].

    Equal sequences get equal ids wherever they occur (every copy in training, a tracked set's copy), so a
    sequence's MemSinks mask is a function of its tokens alone. Never 0 (id 0 switches the whole sink pool on).
    """
    ids = np.empty(len(tokens_NxL), np.int32)
    for i, row in enumerate(np.asarray(tokens_NxL)):
        real = np.ascontiguousarray(row[row != pad_id], dtype="<i4")
        value = int.from_bytes(hashlib.blake2b(real.tobytes(), digest_size=4).digest(), "little") & 0x7FFFFFFF
        ids[i] = value or 1
    return ids
