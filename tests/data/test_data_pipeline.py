"""Pure pieces of the data pipeline: SentencePiece vocabularies, tag alignment, chunking, planted sets."""

import collections

import numpy as np
import pytest
import seqio
from ml_collections import config_dict

from memdyn.data import vocab
from memdyn.data.build import chunking, tasks, tracked

TEXTS = [
    f"The {a} cat sat on the {b} mat. It ran {c}, quickly! Did it?"
    for a in ("big", "small", "red")
    for b in ("old", "new")
    for c in ("home", "away", "north")
] * 4


def test_sentencepiece_round_trip_and_special_ids(tmp_path):
    path = vocab.train_vocabulary(TEXTS, str(tmp_path / "v.model"), model_type="unigram", vocab_size=36)
    v = vocab.load_vocabulary(path)
    sp = v.tokenizer
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.piece_to_id("<mask>")) == (0, 1, 2, 3)
    assert vocab.mask_id(v) == 3
    for text in ("The big cat sat on the old mat.", "It ran away, quickly! Did it?"):
        ids = v.encode(text)
        assert min(ids) >= vocab.NUM_SPECIAL
        assert v.decode(ids) == text


def test_word_vocabulary_is_one_token_per_word(tmp_path):
    path = vocab.train_vocabulary(TEXTS, str(tmp_path / "w.model"), model_type="word", vocab_size=None)
    v = vocab.load_vocabulary(path)
    words = {w for t in TEXTS for w in t.split()}
    for text in TEXTS:
        assert len(v.encode(text)) == len(text.split())
    assert {"▁" + w for w in words | set(vocab.DOC_ID_WORDS)} <= set(vocab.pieces(v))
    assert len(v.encode("document ID")) == 2


@pytest.mark.parametrize("model_type,size", [("unigram", 36), ("bpe", 60), ("word", 12)])
def test_vocabulary_has_exactly_the_size_asked(tmp_path, model_type, size):
    v = vocab.load_vocabulary(
        vocab.train_vocabulary(TEXTS, str(tmp_path / "v.model"), model_type=model_type, vocab_size=size)
    )
    assert v.vocab_size == size
    if model_type == "word":  # the most frequent words are kept, the others read as unknown
        counts = collections.Counter(w for t in TEXTS for w in t.split())
        kept = {p[1:] for p in vocab.pieces(v)} & set(counts)
        assert kept and min(counts[w] for w in kept) >= max(counts[w] for w in set(counts) - kept)
        dropped = min(set(counts) - kept)
        assert v.encode(dropped) == [vocab.UNK_ID]


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "word"])
def test_a_size_the_text_cannot_fill_is_refused_with_the_largest_it_can(tmp_path, model_type):
    with pytest.raises(
        ValueError,
        match=r"config.data.vocab.size=8000: the 72 documents it is trained on support a "
        rf"{model_type} vocabulary of at most (\d+) ids; set --config.data.vocab.size=\1 or less",
    ):
        vocab.train_vocabulary(TEXTS, str(tmp_path / "v.model"), model_type=model_type, vocab_size=8000)
    assert not (tmp_path / "v.model").exists()


def test_enlarged_vocabulary_adds_ids_and_keeps_the_encoding(tmp_path):
    path = vocab.train_vocabulary(TEXTS, str(tmp_path / "v.model"), model_type="bpe", vocab_size=60)
    plain, enlarged = vocab.load_vocabulary(path), vocab.load_vocabulary(path, extra_ids=7)
    assert enlarged.vocab_size == plain.vocab_size + 7
    assert enlarged.encode(TEXTS[0]) == plain.encode(TEXTS[0])


def test_bad_vocabulary_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        vocab.load_vocabulary(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        vocab.load_vocabulary(str(bad))


def _align(token_begin, word_begin, word_end, word_tags):
    import tensorflow as tf

    args = [tf.constant(np.asarray(x, np.int64)) for x in (token_begin, word_begin, word_end)]
    return tasks.align_tags(*args, tf.constant(np.asarray(word_tags, np.int8))).numpy()


def test_align_tags_assigns_each_token_its_words_tag():
    # "The cat, sat  é": words at bytes [0,3) [4,8) [9,12) [14,16); SentencePiece pieces start at:
    # "▁"(0, dummy prefix) "The"(0) "▁ca"(3, the space) "t"(6) ","(7) "▁"(8) "sat"(9) "▁"(12) "▁é"(13)
    got = _align([0, 0, 3, 6, 7, 8, 9, 12, 13], [0, 4, 9, 14], [3, 8, 12, 16], [1, 2, 3, 4])
    np.testing.assert_array_equal(got, [1, 1, 2, 2, 2, 3, 3, 4, 4])


def test_align_tags_with_punctuation_as_its_own_word():
    # spaCy splits "cat," into "cat" and ","; the comma token must get the comma's tag, not the noun's.
    np.testing.assert_array_equal(_align([0, 4, 5, 7], [0, 4, 7], [3, 7, 8], [5, 6, 7]), [5, 6, 6, 7])


def test_gold_tags_of_whitespace_words_align_through_the_tokenizer(tmp_path):
    import tensorflow as tf

    path = vocab.train_vocabulary(TEXTS, str(tmp_path / "v.model"), model_type="unigram", vocab_size=36)
    v = vocab.load_vocabulary(path)
    text = "The big cat sat on the quickly! mat."
    words = text.split()
    ds = tf.data.Dataset.from_tensors(
        {"text": text, "doc_id": np.int64(0), "pos": np.arange(1, len(words) + 1, dtype=np.int64)}
    )
    out = next(tasks.tokenize(ds, {"targets": seqio.Feature(v)}).as_numpy_iterator())
    assert out["targets"].tolist() == v.encode(text)
    # Each piece starting with "▁" (a lone "▁" too) starts the next word; word k has tag k.
    word = 0
    for token, tag in zip(out["targets"], out["tags"]):
        piece = v.tokenizer.id_to_piece(int(token))
        word += piece.startswith("▁")
        assert tag == word, (piece, tag)
    assert word == len(words)


def test_chunk_tokens_fixed_and_at_sentence_ends():
    tokens = np.arange(10)
    assert [(s.start, s.stop) for s in chunking.piece_slices(tokens, 4)] == [(0, 4), (4, 8), (8, 10)]
    end = np.zeros(10, bool)
    end[[2, 4, 9]] = True  # sentences [0..2], [3..4], [5..9]
    pieces = [(s.start, s.stop) for s in chunking.piece_slices(tokens, 5, end)]
    assert pieces == [(0, 5), (5, 10)]  # two sentences packed, then the third whole
    pieces = [(s.start, s.stop) for s in chunking.piece_slices(tokens, 4, end)]
    assert pieces == [(0, 3), (3, 5), (5, 9), (9, 10)]  # a long sentence is cut inside only when it must be
    for piece in chunking.piece_slices(tokens, 4, end)[:2]:
        assert end[piece.stop - 1]


def _tracked(**overrides):
    c = config_dict.ConfigDict(
        dict(canaries=0, canary_length=5, canary_repeats=3, duplicated_docs=0, duplicate_count=4, seed=0)
    )
    c.update(overrides)
    return c


def test_planted_canaries_and_duplicates_are_recorded():
    rng = np.random.default_rng(0)
    train = chunking.Examples(
        rng.integers(4, 50, (20, 8)).astype(np.int32), np.repeat(np.arange(10), 2), np.ones((20, 8), np.int8)
    )
    planted = tracked.plant(
        train,
        _tracked(canaries=2, duplicated_docs=3),
        vocab_size=50,
        num_special=4,
        eos_id=1,
        pad_id=0,
        next_doc_id=100,
    )
    dups, canaries = planted.sets["duplicates"], planted.sets["canaries"]
    assert len(np.unique(dups.doc_ids)) == 3 and len(dups) == 6
    assert len(planted.train) == 20 + 6 * 3 + 2 * 3
    np.testing.assert_array_equal(canaries.doc_ids, [100, 101])
    assert (canaries.tokens[:, 5] == 1).all() and (canaries.tokens[:, 6:] == 0).all()
    assert ((canaries.tokens[:, :5] >= 4) & (canaries.tokens[:, :5] < 50)).all()
    for name, row, index in planted.membership:  # every recorded member is a copy of its tracked example
        np.testing.assert_array_equal(planted.train.tokens[row], planted.sets[name].tokens[index])
    counts = {name: sum(1 for m in planted.membership if m[0] == name) for name in ("duplicates", "canaries")}
    assert counts == {"duplicates": 6 * 4, "canaries": 2 * 3}
    dup = tracked.duplication_counts(planted.train.tokens)
    member_rows = {row for _, row, _ in planted.membership}
    assert set(np.flatnonzero(dup > 1)) == member_rows
    assert set(dup[sorted(member_rows)]) == {3, 4}


def test_planting_rejects_bad_values():
    train = chunking.Examples(np.ones((4, 8), np.int32), np.arange(4))
    with pytest.raises(ValueError, match="canary_length"):
        tracked.plant(
            train,
            _tracked(canaries=1, canary_length=8),
            vocab_size=50,
            num_special=4,
            eos_id=1,
            pad_id=0,
            next_doc_id=4,
        )
    with pytest.raises(ValueError, match="duplicated_docs"):
        tracked.plant(
            train, _tracked(duplicated_docs=5), vocab_size=50, num_special=4, eos_id=1, pad_id=0, next_doc_id=4
        )
