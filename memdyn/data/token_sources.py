"""Token sources that ``memdyn extract`` scores, each read through the feeder like an example store:

  --set=<name>                      a store of the run (``train``: every training sequence, or a tracked set)
  --tokens=<file>.npy               an integer array [num_sequences, length]; example_id = row
  --indexed=<prefix> --rows=a:b     GPT-NeoX indexed data (``memdyn.data.indexed``); example_id = sequence index
  --indexed=<prefix> --steps=a:b    the same, rows [a·1024, b·1024) (Pythia's rows per step)

``length`` is the number of leading tokens scored (prompt + continuation); sequences with fewer real tokens are
left out and counted.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from memdyn.data import indexed as indexed_lib
from memdyn.data.store import ExampleStore


class TokenRows:
    """Store-like rows (``rows``, ``num_examples``, ``seq_len``, ``path``) of sequences read on demand:
    ``read(ids) -> int32 [n, length]`` for the source's example ids."""

    def __init__(self, path: str, example_ids: np.ndarray, length: int, read):
        self.path, self.example_ids, self.length, self._read = path, np.asarray(example_ids, np.int64), length, read
        self.dup_counts = self.seq_ids = self.tags = None

    @property
    def num_examples(self) -> int:
        return len(self.example_ids)

    @property
    def seq_len(self) -> int:
        return self.length

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ids = self.example_ids[np.asarray(indices, np.int64)]
        return {"tokens": self._read(ids), "example_ids": ids, "doc_ids": ids}


@dataclasses.dataclass(frozen=True)
class Source:
    rows: Any  # an ExampleStore or TokenRows, read by the feeder
    row_indices: np.ndarray  # [n] the rows of ``rows`` scored, in order
    left_out: int  # sequences shorter than the scored length
    spec: dict  # what was asked for (written beside the results; a resume must ask for the same)


def parse_range(text: str, flag: str) -> tuple[int, int]:
    start, sep, stop = text.partition(":")
    try:
        a, b = int(start), int(stop)
    except ValueError:
        a = b = -1
    if not sep or not 0 <= a < b:
        raise ValueError(f"{flag}={text!r}: expected a:b with 0 <= a < b")
    return a, b


def open_source(
    data,
    *,
    length: int,
    vocab_size: int,
    set_name: str | None = None,
    tokens: str | None = None,
    indexed: str | None = None,
    rows: str | None = None,
    steps: str | None = None,
    rows_per_step: int = indexed_lib.ROWS_PER_STEP,
) -> Source:
    """The one source named by the flags (``data``: the run's ``RunData``)."""
    given = [f for f, v in (("--set", set_name), ("--tokens", tokens), ("--indexed", indexed)) if v]
    if len(given) != 1:
        raise ValueError(f"name one source: --set, --tokens or --indexed (got {given or 'none'})")
    if (rows or steps) and not indexed:
        raise ValueError("--rows/--steps select rows of --indexed data")
    if set_name:
        stores = data.evaluable()
        if set_name not in stores:
            raise ValueError(f"--set={set_name!r} is not a set of this run; sets: {sorted(stores)}")
        store: ExampleStore = stores[set_name]
        if store.seq_len < length:
            raise ValueError(
                f"--set={set_name!r}: examples of {store.seq_len} tokens, shorter than prompt_len + num_new = {length}"
            )
        full = store.token_counts(data.pad_id) >= length  # right-padded: the first `length` are all real
        return Source(store, np.flatnonzero(full), int((~full).sum()), {"set": set_name})
    if tokens:
        if not os.path.isfile(tokens):
            raise FileNotFoundError(f"--tokens={tokens!r} does not exist")
        array = np.load(tokens, mmap_mode="r")
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise ValueError(
                f"--tokens={tokens!r}: expected an integer array [num_sequences, length], got "
                f"{array.dtype} {array.shape}"
            )
        if array.shape[0] == 0:
            raise ValueError(f"--tokens={tokens!r} holds no sequences (shape {array.shape}): nothing to score")
        if array.shape[1] < length:
            raise ValueError(
                f"--tokens={tokens!r}: sequences of {array.shape[1]} tokens, shorter than prompt_len "
                f"+ num_new = {length}"
            )
        for start in range(0, array.shape[0], 1 << 20):  # in blocks: the file may be larger than memory
            _check_ids(np.asarray(array[start : start + (1 << 20), :length]), vocab_size, f"--tokens={tokens!r}")
        read = lambda ids: np.asarray(array[ids, :length], np.int32)  # noqa: E731
        ids = np.arange(array.shape[0], dtype=np.int64)
        return Source(
            TokenRows(tokens, ids, length, read),
            np.arange(len(ids)),
            0,
            {"tokens": os.path.abspath(tokens), "shape": list(array.shape)},
        )
    dataset = indexed_lib.IndexedDataset(indexed)
    if bool(rows) == bool(steps):
        raise ValueError("--indexed needs one of --rows=a:b or --steps=a:b")
    if rows:
        a, b = parse_range(rows, "--rows")
    else:
        a, b = (v * rows_per_step for v in parse_range(steps, "--steps"))
    if b > len(dataset):
        raise ValueError(f"--indexed={indexed!r} has {len(dataset)} sequences; asked for rows up to {b}")
    candidates = np.arange(a, b, dtype=np.int64)
    long_enough = np.asarray(dataset.sizes[a:b]) >= length
    ids = candidates[long_enough]
    return Source(
        TokenRows(indexed, ids, length, lambda i: _checked(dataset.rows(i, length), vocab_size, indexed)),
        np.arange(len(ids)),
        int((~long_enough).sum()),
        {"indexed": os.path.abspath(indexed), "rows": [int(a), int(b)]},
    )


def _check_ids(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"{what}: token ids {tokens.min()}..{tokens.max()} outside the model's vocabulary of {vocab_size}"
        )


def _checked(tokens: np.ndarray, vocab_size: int, prefix: str) -> np.ndarray:
    _check_ids(tokens, vocab_size, f"--indexed={prefix!r}")
    return tokens
