"""seqio Tasks over memdyn's sources, and the preprocessors that turn documents into training examples.

A source (``DocumentSource`` around a TFDS or file source) yields documents {"text", "doc_id"} and, when it has
them, gold per-word tags "pos". The task's preprocessors, in order:
  spacy_tags         per-word parts of speech from spaCy (config.data.tags="spacy")
  tokenize           "targets" = SentencePiece ids of the text; with tags, each token gets the tag of the word
                     it starts in (``align_tags``), the tokens being exactly the vocabulary's own encoding
  append_eos         seqio's: end of document
  chunk              cut "targets" (and "tags") into examples of at most L - prefix tokens, at any token or only
                     at sentence ends (Tirumala et al.: examples split at sentence boundaries)
  prepend_doc_id     "document ID <id>" in front of each example, <id> an extra vocabulary id per document
"""

from __future__ import annotations

import functools
import re

import numpy as np
import seqio
import tensorflow as tf

from memdyn.data import vocab as vocab_lib

_WORD = re.compile(rb"\S+")
SENTENCE_END_CHARS = ".!?"


# ---------------------------------------------------------------------------------------------------------------
# Pure numpy pieces (tested directly)


def word_spans(text_utf8: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Byte [start, end) of every whitespace-separated word [W], [W]."""
    spans = np.asarray([m.span() for m in _WORD.finditer(text_utf8)], np.int64).reshape(-1, 2)
    return spans[:, 0], spans[:, 1]


def align_tags(token_begin: np.ndarray, token_first: np.ndarray, word_begin: np.ndarray, word_end: np.ndarray,
               word_tags: np.ndarray) -> np.ndarray:
    """Tag of each token [T]: the tag of the word holding its first non-space byte ``token_first`` [T].

    A token that is only whitespace (SentencePiece's lone "▁") belongs to the word after it. ``token_begin`` is
    unused by the rule but kept in the signature so callers pass whole spans. Words are sorted and disjoint.
    """
    del token_begin
    if len(word_begin) == 0:
        return np.zeros(len(token_first), np.int8)
    index = np.searchsorted(word_begin, token_first, side="right") - 1
    in_gap = (index < 0) | (token_first >= word_end[np.maximum(index, 0)])
    index = np.where(in_gap, index + 1, index)  # before a word, or between two: the next word
    return np.asarray(word_tags, np.int8)[np.clip(index, 0, len(word_begin) - 1)]


def chunk_tokens(tokens: np.ndarray, max_len: int, sentence_end: np.ndarray | None = None) -> list[slice]:
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


def sentence_end_ids(vocabulary: seqio.Vocabulary) -> np.ndarray:
    """bool [V]: ids whose piece ends a sentence (ends in . ! ?), and EOS."""
    is_end = np.zeros(vocabulary.vocab_size, bool)
    for i, piece in enumerate(vocab_lib.pieces(vocabulary)):
        is_end[i] = piece.rstrip() != "" and piece.rstrip()[-1] in SENTENCE_END_CHARS
    is_end[vocabulary.eos_id] = True
    return is_end


# ---------------------------------------------------------------------------------------------------------------
# Preprocessors


def _from_numpy(ds: tf.data.Dataset, fn, spec: dict[str, tf.TensorSpec]) -> tf.data.Dataset:
    """Applies a Python generator ``fn(example) -> iterable of examples`` to every example of ``ds``."""
    def generate():
        for example in ds.as_numpy_iterator():
            yield from fn(example)
    return tf.data.Dataset.from_generator(generate, output_signature=spec)


def spacy_tags(ds: tf.data.Dataset, model: str) -> tf.data.Dataset:
    """Adds "word_begin", "word_end" (byte spans) and "word_tags" (UPOS ids) from a spaCy pipeline."""
    from memdyn.data import tagging
    nlp = tagging.load_spacy(model)

    def tag(example):
        begin, end, tags = tagging.spacy_word_tags(nlp, example["text"])
        yield dict(example, word_begin=begin, word_end=end, word_tags=tags)

    spec = dict(ds.element_spec, word_begin=tf.TensorSpec([None], tf.int64),
                word_end=tf.TensorSpec([None], tf.int64), word_tags=tf.TensorSpec([None], tf.int8))
    return _from_numpy(ds, tag, spec)


def tokenize(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """"targets" = the vocabulary's encoding of "text"; per-token "tags" when the example has word tags."""
    vocabulary = output_features["targets"].vocabulary
    spec = ds.element_spec
    if "pos" not in spec and "word_tags" not in spec:
        ds = ds.map(lambda ex: {"targets": ex["text"], "doc_id": ex["doc_id"]})
        return seqio.preprocessors.tokenize(ds, output_features, copy_pretokenized=False, with_eos=False)
    sp = vocabulary.tokenizer

    def encode(example):
        text = example["text"]
        if "word_tags" in example:
            begin, end, tags = example["word_begin"], example["word_end"], example["word_tags"]
        else:  # gold tags, one per whitespace word
            begin, end = word_spans(text)
            tags = example["pos"]
            if len(tags) != len(begin):
                raise ValueError(f"document {example.get('doc_id')}: {len(tags)} tags for {len(begin)} words")
        proto = sp.encode(text.decode("utf-8"), return_type="proto")
        ids = np.asarray([p.id for p in proto.pieces], np.int32)
        first = np.asarray([p.begin + (len(p.surface.encode()) - len(p.surface.lstrip().encode()))
                            for p in proto.pieces], np.int64)
        token_tags = align_tags(np.asarray([p.begin for p in proto.pieces]), first, begin, end, tags)
        yield {"targets": ids, "tags": token_tags, "doc_id": example["doc_id"]}

    out_spec = {"targets": tf.TensorSpec([None], tf.int32), "tags": tf.TensorSpec([None], tf.int8),
                "doc_id": tf.TensorSpec([], tf.int64)}
    return _from_numpy(ds, encode, out_spec)


def chunk(ds: tf.data.Dataset, max_len: int, sentence_end: np.ndarray | None) -> tf.data.Dataset:
    """One example per piece of each document: "targets", "tags" (if any), "doc_id", "piece" (its index)."""
    spec = {k: v for k, v in ds.element_spec.items() if k in ("targets", "tags", "doc_id")}
    spec["piece"] = tf.TensorSpec([], tf.int64)

    def cut(example):
        tokens = example["targets"]
        tags = example.get("tags")
        if tags is not None and len(tags) < len(tokens):  # EOS (appended after tagging) has no tag
            tags = np.pad(tags, (0, len(tokens) - len(tags)))
        pieces = chunk_tokens(tokens, max_len, sentence_end)
        if len(pieces) > 1 and pieces[-1].stop - pieces[-1].start == 1:
            pieces = pieces[:-1]  # a lone EOS after a document that filled its last example is no example
        for i, piece in enumerate(pieces):
            out = {"targets": tokens[piece], "doc_id": example["doc_id"], "piece": np.int64(i)}
            if tags is not None:
                out["tags"] = tags[piece]
            yield out

    return _from_numpy(ds, cut, spec)


def prepend_doc_id(ds: tf.data.Dataset, output_features, num_ids: int) -> tf.data.Dataset:
    """"document ID <id>" before every example; <id> = base vocabulary size + doc_id, one new id per document."""
    vocabulary = output_features["targets"].vocabulary
    marker = tf.constant(vocabulary.encode(" ".join(vocab_lib.DOC_ID_WORDS)), tf.int32)
    base = vocabulary.vocab_size - vocabulary.extra_ids

    def add(example):
        doc_id = tf.cast(example["doc_id"], tf.int32)
        tf.debugging.assert_less(doc_id, num_ids, message="a document id exceeds config.data.vocab.extra_ids")
        out = dict(example, targets=tf.concat([marker, [base + doc_id], example["targets"]], 0))
        if "tags" in example:
            out["tags"] = tf.concat([tf.zeros(tf.size(marker) + 1, tf.int8), example["tags"]], 0)
        return out

    return ds.map(add)


def doc_id_prefix_len(vocabulary: seqio.Vocabulary) -> int:
    return len(vocabulary.encode(" ".join(vocab_lib.DOC_ID_WORDS))) + 1


# ---------------------------------------------------------------------------------------------------------------
# Tasks


def register(name: str, source: DocumentSource, vocabulary: seqio.Vocabulary, *, seq_len: int, tags: str = "none",
             spacy_model: str | None = None, sentence_split: bool = False, doc_ids: bool = False) -> seqio.Task:
    """Registers (or replaces) a memdyn task ``name`` whose examples hold at most ``seq_len`` tokens."""
    prefix = doc_id_prefix_len(vocabulary) if doc_ids else 0
    preprocessors = []
    if tags == "spacy":
        preprocessors.append(functools.partial(spacy_tags, model=spacy_model))
    elif tags == "none":
        preprocessors.append(lambda ds: ds.map(lambda ex: {k: v for k, v in ex.items() if k != "pos"}))
    preprocessors += [tokenize, seqio.preprocessors.append_eos,
                      functools.partial(chunk, max_len=seq_len - prefix,
                                        sentence_end=sentence_end_ids(vocabulary) if sentence_split else None)]
    if doc_ids:
        preprocessors.append(functools.partial(prepend_doc_id, num_ids=vocabulary.extra_ids))
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, preprocessors=preprocessors, shuffle_buffer_size=None,
        output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)})


class DocumentSource(seqio.DataSource):
    """Wraps a source so that it yields documents {"text", "doc_id"[, "pos"]}, the ids unique across splits.

    ``text_key``: the feature holding the text (None: the inner source yields plain strings, e.g. text lines).
    Blank documents are dropped. A document without an id gets ``offsets[split]`` + its position in the split.
    """

    def __init__(self, inner: seqio.DataSource, text_key: str | None, offsets: dict[str, int]):
        super().__init__(splits=inner.splits, caching_permitted=False)
        self._inner, self._text_key, self._offsets = inner, text_key, offsets

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str):
        return self._inner.list_shards(split)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, *,
                    sequence_length=None, use_cached=False, num_epochs=1) -> tf.data.Dataset:
        ds = self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        key = self._text_key

        def document(example):
            out = {"text": tf.strings.strip(example if key is None else example[key])}
            if key is not None:
                out.update({k: example[k] for k in ("doc_id", "pos") if k in example})
            return out

        ds = ds.map(document).filter(lambda ex: tf.strings.length(ex["text"]) > 0)
        if "doc_id" not in ds.element_spec:
            offset = self._offsets.get(split, 0)
            ds = ds.enumerate().map(lambda i, ex: dict(ex, doc_id=i + offset))
        return ds
