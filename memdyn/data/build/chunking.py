"""The one chunker: documents of token ids cut into fixed-length examples.

``piece_slices`` cuts one document into pieces of at most ``max_len`` tokens: at any token, or, given which ids
end a sentence, only at sentence ends (Tirumala et al.: examples split at sentence boundaries), whole sentences
packed greedily and only a sentence longer than a piece cut inside. ``chunk_documents`` lays every piece of every
document out as a right-padded row of ``Examples``; memdyn's seqio tasks call ``piece_limits`` inside TF.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Examples:
    """Fixed-length examples: tokens int32 [N, L], doc_ids int64 [N], tags int8 [N, L] or None."""
    tokens: np.ndarray
    doc_ids: np.ndarray
    tags: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, rows: np.ndarray) -> "Examples":
        return Examples(self.tokens[rows], self.doc_ids[rows], None if self.tags is None else self.tags[rows])

    @staticmethod
    def concat(parts: list["Examples"]) -> "Examples":
        tags = None if any(p.tags is None for p in parts) else np.concatenate([p.tags for p in parts])
        return Examples(np.concatenate([p.tokens for p in parts]), np.concatenate([p.doc_ids for p in parts]), tags)


def piece_slices(tokens: np.ndarray, max_len: int, sentence_end: np.ndarray | None = None) -> list[slice]:
    """Slices cutting ``tokens`` [T] into pieces of at most ``max_len``.

    With ``sentence_end`` (bool per vocabulary id) pieces end at sentence ends: whole sentences are packed
    greedily, and only a sentence longer than ``max_len`` is cut inside.
    """
    if max_len < 1:
        raise ValueError(f"examples of at most {max_len} tokens: config.data.seq_len is too short")
    n = len(tokens)
    if sentence_end is None:
        return [slice(s, min(s + max_len, n)) for s in range(0, n, max_len)]
    ends = np.flatnonzero(sentence_end[tokens]) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    pieces, start, prev = [], 0, 0
    for end in ends:
        if end - start > max_len and prev > start:  # this sentence does not fit: close the piece before it
            pieces.append(slice(start, prev))
            start = prev
        while end - start > max_len:  # a single sentence longer than a piece
            pieces.append(slice(start, start + max_len))
            start += max_len
        prev = end
    if start < n:
        pieces.append(slice(start, n))
    return pieces


def piece_limits(tokens: np.ndarray, max_len: int, sentence_end: np.ndarray | None, eos_id: int) -> np.ndarray:
    """End offsets [P] of a document's pieces (``piece_slices``), int64; a last piece that is only the EOS of a
    document which filled its previous piece is dropped: it is no example."""
    pieces = piece_slices(tokens, max_len, sentence_end)
    if len(pieces) > 1 and pieces[-1].stop - pieces[-1].start == 1 and tokens[pieces[-1].start] == eos_id:
        pieces = pieces[:-1]
    return np.asarray([p.stop for p in pieces], np.int64)


def chunk_documents(documents: list[tuple[np.ndarray, np.ndarray | None]], doc_ids: np.ndarray, seq_len: int,
                    pad_id: int, max_len: int | None = None) -> Examples:
    """Every document cut into consecutive pieces of ``max_len`` tokens (``piece_slices``; None: ``seq_len``),
    each a row of ``seq_len`` tokens, right-padded.

    ``documents``: (tokens [T], tags [T] or None) each, with their ids ``doc_ids`` [D]. Tags are kept when every
    document has them (0 in padding).
    """
    if seq_len < 2:
        raise ValueError(f"config.data.seq_len={seq_len} must be at least 2")
    max_len = seq_len if max_len is None else max_len
    if not 2 <= max_len <= seq_len:
        raise ValueError(f"config.data.chunk_len={max_len} must be between 2 and config.data.seq_len={seq_len}")
    pieces = [(i, p) for i, (tokens, _) in enumerate(documents) for p in piece_slices(tokens, max_len)]
    if not pieces:
        raise ValueError("no documents to chunk: the dataset is empty")
    has_tags = all(tags is not None for _, tags in documents)
    tokens = np.full((len(pieces), seq_len), pad_id, np.int32)
    tags = np.zeros((len(pieces), seq_len), np.int8)
    for row, (i, piece) in enumerate(pieces):
        doc_tokens, doc_tags = documents[i]
        tokens[row, :piece.stop - piece.start] = doc_tokens[piece]
        if has_tags:
            tags[row, :piece.stop - piece.start] = doc_tags[piece]
    doc_index = np.asarray([i for i, _ in pieces], np.int64)
    return Examples(tokens, np.asarray(doc_ids, np.int64)[doc_index], tags if has_tags else None)
