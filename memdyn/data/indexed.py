"""GPT-NeoX / Megatron "MMapIndexedDataset" token files (``<prefix>.idx`` + ``<prefix>.bin``), the format of
Pythia's pre-shuffled training data, read memory-mapped.

``.bin`` holds every sequence's tokens back to back. ``.idx``:
  9 bytes  magic ``MMIDIDX\\x00\\x00``
  <Q       format version (1)
  <B       token dtype code (DTYPES)
  <Q       number of sequences S
  <Q       number of document boundaries D
  int32[S] sequence lengths in tokens
  int64[S] byte offset of each sequence in ``.bin``
  int64[D] document boundaries (sequence indices; unused here)

Pythia's pre-shuffled data stores each training row (2049 tokens) as one sequence, in training order: the rows of
step S are sequences [S·1024, (S+1)·1024) (the Pythia batch viewer's convention, ``ROWS_PER_STEP``).
"""

from __future__ import annotations

import os
import struct

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float64, 8: np.uint16}
ROWS_PER_STEP = 1024  # Pythia: 1024 sequences of 2049 tokens per optimizer step


class IndexedDataset:
    """Read access to ``<prefix>.idx``/``.bin``; nothing is loaded whole."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--indexed={prefix!r}: {path} does not exist")
        with open(idx_path, "rb") as f:
            header = f.read(len(MAGIC) + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[: len(MAGIC)] != MAGIC:
            raise ValueError(f"--indexed={prefix!r}: {idx_path} is not a GPT-NeoX indexed dataset (bad magic)")
        version, code, count, doc_count = struct.unpack("<QBQQ", header[len(MAGIC) :])
        if version != VERSION or code not in DTYPES:
            raise ValueError(f"--indexed={prefix!r}: unsupported version {version} or dtype code {code}")
        self.dtype = np.dtype(DTYPES[code])
        if self.dtype.kind == "f":
            raise ValueError(f"--indexed={prefix!r}: tokens of dtype {self.dtype} are not token ids")
        offset = len(header)
        expected = offset + 12 * count + 8 * doc_count
        if os.path.getsize(idx_path) < expected:  # checked before mapping: numpy cannot map past the end
            raise ValueError(
                f"--indexed={prefix!r}: {idx_path} is truncated ({os.path.getsize(idx_path)} bytes, "
                f"the header says {expected})"
            )
        if count == 0:
            raise ValueError(f"--indexed={prefix!r}: the dataset holds no sequence")
        self.sizes = np.memmap(idx_path, np.int32, "r", offset, (count,))
        self.pointers = np.memmap(idx_path, np.int64, "r", offset + 4 * count, (count,))
        needed = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize
        if os.path.getsize(bin_path) < needed:
            raise ValueError(
                f"--indexed={prefix!r}: {bin_path} holds {os.path.getsize(bin_path)} bytes, its index "
                f"says at least {needed}"
            )
        self.tokens = np.memmap(bin_path, self.dtype, "r")

    def __len__(self) -> int:
        return len(self.sizes)

    def rows(self, indices: np.ndarray, length: int) -> np.ndarray:
        """The first ``length`` tokens of sequences ``indices`` [n] as int32 [n, length]; each must be that long."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and (self.sizes[indices] < length).any():
            raise ValueError(f"sequences shorter than {length} tokens asked for in {self.prefix!r}")
        starts = self.pointers[indices] // self.dtype.itemsize
        return np.asarray(self.tokens[starts[:, None] + np.arange(length)], np.int32)


def write_indexed(prefix: str, sequences, dtype=np.uint16) -> None:
    """Writes ``sequences`` (1-d token arrays) as ``<prefix>.idx``/``.bin``, one document per sequence."""
    dtype = np.dtype(dtype)
    code = next(c for c, d in DTYPES.items() if np.dtype(d) == dtype)
    sizes = np.array([len(s) for s in sequences], np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))[:-1]]).astype(np.int64) * dtype.itemsize
    with open(prefix + ".bin", "wb") as f:
        for sequence in sequences:
            f.write(np.asarray(sequence, dtype).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC + struct.pack("<QBQQ", VERSION, code, len(sizes), len(sizes) + 1))
        f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(sizes) + 1, dtype=np.int64).tobytes())
