import collections
import dataclasses

import numpy as np
import pytest

from memdyn.data.build import corpus as C

SMALL = C.CorpusConfig(
    num_train_docs=200,
    num_validation_docs=40,
    num_duplicated_docs=5,
    duplicate_count=4,
    num_canaries=3,
    canary_length=16,
    canary_repeats=7,
    seed=11,
)


@pytest.fixture(scope="module")
def small():
    return C.generate(SMALL)


def _all_docs(corpus):
    return corpus.train + corpus.validation


def test_deterministic(small):
    again = C.generate(SMALL)
    assert again.vocab == small.vocab
    for split in ("train", "validation"):
        a, b = getattr(small, split), getattr(again, split)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert (x.doc_id, x.kind) == (y.doc_id, y.kind)
            np.testing.assert_array_equal(x.tokens, y.tokens)
            np.testing.assert_array_equal(x.tags, y.tags)


def test_different_seeds_differ(small):
    other = C.generate(dataclasses.replace(SMALL, seed=12))
    assert other.vocab == small.vocab  # the vocabulary depends on vocab_size only
    first = {d.doc_id: d.tokens.tobytes() for d in small.train}
    second = {d.doc_id: d.tokens.tobytes() for d in other.train}
    assert first.keys() == second.keys()
    assert all(first[i] != second[i] for i in first)


def test_special_tokens_and_tags(small):
    assert (C.PAD_ID, C.EOS_ID, C.UNK_ID, C.MASK_ID, C.NUM_SPECIAL) == (0, 1, 2, 3, 4)  # memdyn.data.vocab
    assert small.vocab[: C.NUM_SPECIAL] == ("<pad>", "<eos>", "<unk>", "<mask>")
    assert C.POS_TAGS[0] == "NONE"
    assert set(C.POS_TAGS) == {
        "NONE",
        "NOUN",
        "PROPN",
        "NUM",
        "VERB",
        "ADJ",
        "ADV",
        "DET",
        "ADP",
        "PRON",
        "CONJ",
        "PUNCT",
    }
    tags = C.vocab_tags(SMALL.vocab_size)
    assert tags.dtype == np.int8 and tags.shape == (SMALL.vocab_size,)
    assert (tags[: C.NUM_SPECIAL] == 0).all() and (tags[C.NUM_SPECIAL :] > 0).all()
    assert C.word_tag(C.EOS_ID) == 0
    assert len(set(small.vocab)) == len(small.vocab) == SMALL.vocab_size


def test_documents_well_formed(small):
    for doc in _all_docs(small):
        assert doc.tokens.dtype == np.int32 and doc.tags.dtype == np.int8
        assert doc.tokens.shape == doc.tags.shape
        assert doc.tokens[-1] == C.EOS_ID and (doc.tokens[:-1] >= C.NUM_SPECIAL).all()
        assert doc.tags[-1] == C.TAG_ID["NONE"]
        assert not doc.tokens.flags.writeable


def test_gold_tags_match_vocabulary(small):
    tags = small.vocab_tags
    for doc in _all_docs(small):
        np.testing.assert_array_equal(doc.tags, tags[doc.tokens])
    # Spot-check the tags against the words themselves.
    words_of = collections.defaultdict(set)
    for word, tag in zip(small.vocab, tags):
        words_of[C.POS_TAGS[tag]].add(word)
    assert {"the", "a"} <= words_of["DET"] and {".", ","} == words_of["PUNCT"]
    assert {"of", "in"} <= words_of["ADP"] and "and" in words_of["CONJ"] and "he" in words_of["PRON"]
    assert all(w[0].isupper() for w in words_of["PROPN"])
    assert all(w.endswith("ly") for w in words_of["ADV"])
    assert "42" in words_of["NUM"] and "1987" in words_of["NUM"]


def test_natural_text_has_structure_and_zipfian_words(small):
    text = [small.decode(d.tokens) for d in small.train if d.kind != "canary"]
    assert all(t.endswith(". <eos>") for t in text[:50])  # default lengths end at a sentence boundary
    nouns = collections.Counter(
        int(t) for d in small.train if d.kind == "normal" for t, g in zip(d.tokens, d.tags) if g == C.TAG_ID["NOUN"]
    )
    counts = sorted(nouns.values(), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]  # frequent head, long tail


def test_doc_lengths_in_range(small):
    for doc in _all_docs(small):
        if doc.kind != "canary":
            assert SMALL.min_doc_tokens <= len(doc.tokens) <= SMALL.max_doc_tokens
    tight = C.generate(C.CorpusConfig(num_train_docs=50, num_validation_docs=5, min_doc_tokens=7, max_doc_tokens=7))
    assert {len(d.tokens) for d in _all_docs(tight)} == {7}


def test_duplicates_and_canaries(small):
    by_id = collections.defaultdict(list)
    for doc in small.train:
        by_id[doc.doc_id].append(doc)
    kinds = collections.Counter(docs[0].kind for docs in by_id.values())
    assert kinds == {
        "normal": SMALL.num_train_docs - SMALL.num_duplicated_docs,
        "duplicate": SMALL.num_duplicated_docs,
        "canary": SMALL.num_canaries,
    }
    expected = {"normal": 1, "duplicate": SMALL.duplicate_count, "canary": SMALL.canary_repeats}
    for docs in by_id.values():
        assert len(docs) == expected[docs[0].kind]
        assert {d.kind for d in docs} == {docs[0].kind}
        assert len({d.tokens.tobytes() for d in docs}) == 1
    # Different doc ids never share tokens.
    assert len({docs[0].tokens.tobytes() for docs in by_id.values()}) == len(by_id)
    for docs in by_id.values():
        if docs[0].kind == "canary":
            assert len(docs[0].tokens) == SMALL.canary_length + 1
    assert len(small.train) == sum(len(docs) for docs in by_id.values())
    assert [d.doc_id for d in small.train] != sorted(d.doc_id for d in small.train)  # shuffled


def test_validation_disjoint_from_train(small):
    assert len(small.validation) == SMALL.num_validation_docs
    assert all(d.kind == "normal" for d in small.validation)
    train_ids = {d.doc_id for d in small.train}
    train_tokens = {d.tokens.tobytes() for d in small.train}
    for doc in small.validation:
        assert doc.doc_id not in train_ids and doc.tokens.tobytes() not in train_tokens


def test_decode_drops_pads(small):
    doc = small.train[0]
    padded = np.concatenate([doc.tokens, np.full(3, C.PAD_ID, np.int32)])
    assert small.decode(padded) == small.decode(doc.tokens)
    assert small.decode([C.NUM_SPECIAL, C.EOS_ID]) == f"{small.vocab[C.NUM_SPECIAL]} <eos>"


def test_default_config_and_vocab_sizes():
    corpus = C.generate(C.CorpusConfig())
    assert len(corpus.train) == 2000 and len(corpus.validation) == 200 and len(corpus.vocab) == 2048
    smallest = C.generate(C.CorpusConfig(vocab_size=C.MIN_VOCAB_SIZE, num_train_docs=20, num_validation_docs=2))
    assert len(smallest.vocab) == C.MIN_VOCAB_SIZE


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 10),
        ("num_train_docs", 0),
        ("num_validation_docs", -1),
        ("min_doc_tokens", 1),
        ("max_doc_tokens", 20),
        ("num_duplicated_docs", -1),
        ("num_duplicated_docs", 10_000),
        ("duplicate_count", 0),
        ("num_canaries", -2),
        ("canary_length", 0),
        ("canary_repeats", 0),
        ("seed", -1),
        ("vocab_size", 2048.0),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value}"):
        C.generate(dataclasses.replace(C.CorpusConfig(), **{field: value}))


def test_impossible_distinct_documents_raises():
    config = C.CorpusConfig(
        num_train_docs=5, num_validation_docs=0, num_canaries=200, canary_length=1, vocab_size=C.MIN_VOCAB_SIZE
    )
    with pytest.raises(ValueError, match="distinct canaries"):
        C.generate(config)
