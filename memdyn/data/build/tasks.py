"""seqio Tasks over memdyn's sources, and the preprocessors that turn documents into training examples.

A source (``document_source`` around a TFDS or file source) yields documents {"text", "doc_id"} and, when it has
them, gold per-word tags "pos". The task's preprocessors, in order:
  spacy_tags         per-word parts of speech from spaCy (config.data.tags="spacy")
  tokenize           "targets" = SentencePiece ids of the text; with tags, each token gets the tag of the word
                     it starts in (``align_tags``), the tokens being exactly the vocabulary's own encoding
  append_eos         seqio's: end of document
  chunk              cut "targets" (and "tags") into examples of at most L - prefix tokens with memdyn's one
                     chunker (memdyn.data.build.chunking), at any token or only at sentence ends
  prepend_doc_id     "document ID <id>" in front of each example, <id> an extra vocabulary id per document
"""

from __future__ import annotations

import functools

import numpy as np
import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
import seqio
import tensorflow as tf

from memdyn.data import vocab as vocab_lib
from memdyn.data.build.chunking import piece_limits
from memdyn.data.build.mapped_source import MappedSource


# ---------------------------------------------------------------------------------------------------------------
# Tag alignment (tested directly)


def align_tags(token_begin: tf.Tensor, word_begin: tf.Tensor, word_end: tf.Tensor,
               word_tags: tf.Tensor) -> tf.Tensor:
    """Tag of each token [T] from its byte start ``token_begin`` [T] and the words' byte spans [W] (W >= 1).

    A token starting inside a word gets that word's tag. One starting in the whitespace before a word (a
    SentencePiece piece "▁cat" starts at the space; a lone "▁" is only the space) belongs to the word after it.
    Words are sorted and disjoint.
    """
    token_begin, word_begin, word_end = (tf.cast(x, tf.int64) for x in (token_begin, word_begin, word_end))
    num_words = tf.shape(word_begin, out_type=tf.int64)[0]
    index = tf.searchsorted(word_begin, token_begin, side="right", out_type=tf.int64) - 1
    in_gap = (index < 0) | (token_begin >= tf.gather(word_end, tf.maximum(index, 0)))
    index = tf.clip_by_value(tf.where(in_gap, index + 1, index), 0, num_words - 1)
    return tf.gather(word_tags, index)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessors


def spacy_tags(ds: tf.data.Dataset, model: str, batch_size: int = 64) -> tf.data.Dataset:
    """Adds "word_begin", "word_end" (byte spans) and "word_tags" (UPOS ids) from a spaCy pipeline."""
    from memdyn.data.build import tagging
    nlp = tagging.load_spacy(model)

    def tag_texts(texts: np.ndarray):  # bytes [n] -> flat begins, ends, tags and words per text [n]
        spans = tagging.spacy_word_tags(nlp, list(texts), batch_size)
        return (np.concatenate([s[0] for s in spans]), np.concatenate([s[1] for s in spans]),
                np.concatenate([s[2] for s in spans]), np.asarray([len(s[0]) for s in spans], np.int64))

    def tag(batch):
        begin, end, tags, lengths = tf.numpy_function(tag_texts, [batch["text"]],
                                                      (tf.int64, tf.int64, tf.int8, tf.int64), stateful=False)
        lengths = tf.ensure_shape(lengths, [None])
        ragged = {name: tf.RaggedTensor.from_row_lengths(tf.ensure_shape(values, [None]), lengths)
                  for name, values in (("word_begin", begin), ("word_end", end), ("word_tags", tags))}
        return dict(batch, **ragged)

    # Batches of documents, so that spaCy tags them with nlp.pipe; unbatched again after.
    return ds.ragged_batch(batch_size).map(tag).unbatch()


def tokenize(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """"targets" = the vocabulary's encoding of "text"; per-token "tags" when the example has word tags."""
    vocabulary = output_features["targets"].vocabulary
    spec = ds.element_spec
    if "pos" not in spec and "word_tags" not in spec:
        ds = ds.map(lambda ex: {"targets": ex["text"], "doc_id": ex["doc_id"]})
        return seqio.preprocessors.tokenize(ds, output_features, copy_pretokenized=False, with_eos=False)
    import tensorflow_text as tf_text

    def encode(example):
        # The vocabulary's own TF tokenizer: the ids are exactly vocabulary.encode(text).
        ids, begin, _ = vocabulary.tf_tokenizer.tokenize_with_offsets(example["text"])
        if "word_tags" in example:
            word_begin, word_end, word_tags = example["word_begin"], example["word_end"], example["word_tags"]
        else:  # gold tags, one per whitespace word
            _, word_begin, word_end = tf_text.WhitespaceTokenizer().tokenize_with_offsets(example["text"])
            word_tags = tf.cast(example["pos"], tf.int8)
            tf.debugging.assert_equal(tf.size(word_tags), tf.size(word_begin),
                                      message="a document has not one gold tag per whitespace word")
        tags = align_tags(begin, word_begin, word_end, word_tags)
        return {"targets": tf.cast(ids, tf.int32), "tags": tags, "doc_id": example["doc_id"]}

    return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE)  # deterministic: order is kept


def chunk(ds: tf.data.Dataset, max_len: int, sentence_end: np.ndarray | None, eos_id: int) -> tf.data.Dataset:
    """One example per piece of each document: "targets", "tags" (if any), "doc_id", "piece" (its index)."""
    def cut(example):
        tokens = example["targets"]
        limits = tf.numpy_function(lambda t: piece_limits(t, max_len, sentence_end, eos_id), [tokens], tf.int64,
                                   stateful=False)
        limits = tf.ensure_shape(limits, [None])
        tokens = tokens[:limits[-1]]
        out = {"targets": tf.RaggedTensor.from_row_limits(tokens, limits),
               "doc_id": tf.fill(tf.shape(limits), example["doc_id"]),
               "piece": tf.range(tf.size(limits, out_type=tf.int64))}
        if "tags" in example:  # EOS, appended after tagging, has no tag
            tags = tf.pad(example["tags"], [[0, tf.maximum(0, tf.size(tokens) - tf.size(example["tags"]))]])
            out["tags"] = tf.RaggedTensor.from_row_limits(tags[:limits[-1]], limits)
        return tf.data.Dataset.from_tensor_slices(out)

    return ds.flat_map(cut)


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


def register(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, *, seq_len: int, tags: str = "none",
             spacy_model: str | None = None, sentence_split: bool = False, doc_ids: bool = False,
             chunk_len: int | None = None) -> seqio.Task:
    """Registers (or replaces) a memdyn task ``name`` whose examples hold at most ``seq_len`` tokens: pieces of
    ``chunk_len`` content tokens (None: all that fit), after the document-ID prefix with ``doc_ids``."""
    prefix = doc_id_prefix_len(vocabulary) if doc_ids else 0
    if chunk_len is not None and chunk_len + prefix > seq_len:
        raise ValueError(f"config.data.chunk_len={chunk_len} and the {prefix}-token document-ID prefix do not fit "
                         f"in config.data.seq_len={seq_len}: set config.data.chunk_len={seq_len - prefix} or less")
    preprocessors = []
    if tags == "spacy":
        preprocessors.append(functools.partial(spacy_tags, model=spacy_model))
    elif tags == "none":
        preprocessors.append(lambda ds: ds.map(lambda ex: {k: v for k, v in ex.items() if k != "pos"}))
    preprocessors += [tokenize, seqio.preprocessors.append_eos,
                      functools.partial(chunk, max_len=chunk_len or seq_len - prefix, eos_id=vocabulary.eos_id,
                                        sentence_end=vocab_lib.sentence_end_ids(vocabulary) if sentence_split else None)]
    if doc_ids:
        preprocessors.append(functools.partial(prepend_doc_id, num_ids=vocabulary.extra_ids))
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, preprocessors=preprocessors, shuffle_buffer_size=None,
        output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)})


def document_source(inner: seqio.DataSource, text_key: str | None, offsets: dict[str, int]) -> MappedSource:
    """``inner`` yielding documents {"text", "doc_id"[, "pos"]}, the ids unique across splits.

    ``text_key``: the feature holding the text (None: the inner source yields plain strings, e.g. text lines).
    Blank documents are dropped. A document without an id gets ``offsets[split]`` + its position in the split.
    """
    def documents(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
        def document(example):
            out = {"text": tf.strings.strip(example if text_key is None else example[text_key])}
            if text_key is not None:
                out.update({k: example[k] for k in ("doc_id", "pos") if k in example})
            return out

        ds = ds.map(document).filter(lambda ex: tf.strings.length(ex["text"]) > 0)
        if "doc_id" not in ds.element_spec:
            offset = offsets.get(split, 0)
            ds = ds.enumerate().map(lambda i, ex: dict(ex, doc_id=i + offset))
        return ds

    return MappedSource(inner, documents)
