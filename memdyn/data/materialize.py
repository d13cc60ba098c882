"""Materializing a seqio Task (memdyn's over TFDS or local text, or a user's) into a run's example stores.

Layout of <workdir>/data/ (every store written atomically, see memdyn.data.store):
  train/  validation/  control/  special/  [canaries/  duplicates/]   example stores
  vocab.model        the SentencePiece model the tokens come from (memdyn's sources)
  membership.csv     set,example_id,tracked_example_id,doc_id: training rows that are copies of a tracked example
  tfds/              the built memdyn_synthetic TFDS dataset, when config.data.tfds.data_dir is unset
Held-out documents (the source's validation split, or the last config.data.validation_docs training documents
when it has none) are split as for the synthetic corpus: the last ``special_docs`` form ``special``, the as many
before them ``control``, the rest ``validation``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import importlib.util
import logging
import os
import shutil
import sys
import time

import numpy as np
import pandas as pd
import seqio
from ml_collections import config_dict

from memdyn.data import tasks as tasks_lib
from memdyn.data import tracked as tracked_lib
from memdyn.data import vocab as vocab_lib
from memdyn.data.store import ExampleStore, chunk_documents, write_store

_COMMON_FIELDS = ("source", "seq_len", "special_docs", "validation_docs", "doc_ids", "sentence_split", "tags",
                  "spacy_model", "tracked")


def data_fingerprint(data: config_dict.ConfigDict) -> dict:
    """The part of config.data that decides the stores' contents (compared when a store is reused)."""
    fields = {name: data[name] for name in _COMMON_FIELDS}
    fields[data.source] = data[data.source]
    if data.source in ("tfds", "text"):  # the vocabulary file is checked by content (_check_vocabulary), not path
        fields["vocab"] = {k: v for k, v in data.vocab.items() if k != "path"}
    if data.source == "tfds" and data.tfds.name == "memdyn_synthetic":
        fields["synthetic"] = data.synthetic
    return config_dict.ConfigDict(fields).to_dict()


def check_reusable(data_dir: str, fingerprint: dict) -> ExampleStore | None:
    """The existing train store of ``data_dir`` if built from the same data config; None if there is none."""
    from memdyn.config import differences
    path = os.path.join(data_dir, "train")
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        return None
    train = ExampleStore(path)
    stored = train.manifest["data"] if "data" in train.manifest else _legacy_fingerprint(train.manifest,
                                                                                          fingerprint)
    diff = differences(_jsonable(stored), _jsonable(fingerprint))
    if diff:
        raise ValueError(f"the example stores in {data_dir!r} were built from a different data config "
                         f"({'; '.join(diff[:4])}); use a new --workdir")
    return train


def _legacy_fingerprint(manifest: dict, fingerprint: dict) -> dict:
    """The fingerprint of a synthetic store written before manifests carried one (memdyn <= 0.1, first session):
    its corpus, seq_len and special_docs, with every option it did not have at its default."""
    if manifest.get("source") != "synthetic" or "corpus" not in manifest:
        return {}
    legacy = dict(fingerprint, synthetic=manifest["corpus"], seq_len=manifest["seq_len"],
                  special_docs=manifest["special_docs"])
    legacy["tracked"] = dict(fingerprint["tracked"], canaries=0, duplicated_docs=0)
    return legacy


def _jsonable(value):
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------------------------------------------------
# Sources -> seqio tasks


def build_task(config: config_dict.ConfigDict, data_dir: str) -> tuple[seqio.Task, dict[str, str | None], dict]:
    """The seqio task of config.data, its splits {"train": ..., "validation": ... or None} and facts for the
    manifest. memdyn's own sources get a memdyn task (vocabulary trained on first use); everything is checked
    before the task is read."""
    data = config.data
    if data.source == "seqio":
        return _user_task(data)
    if data.source == "tfds":
        source, splits, num_docs, has_pos = _tfds_source(data, data_dir)
    else:
        source, splits, num_docs, has_pos = _text_source(data)
    if data.tags == "gold" and not has_pos:
        raise ValueError(f"config.data.tags='gold' but source {data.source!r} has no gold tags ('pos'); use "
                         "tags='spacy' or 'none'")
    if data.tags == "spacy":
        from memdyn.data import tagging
        tagging.check_available(data.spacy_model)
    vocab_path = _vocabulary_file(data, data_dir, source, splits["train"])
    extra_ids = data.vocab.extra_ids
    if data.doc_ids != "none":  # the prefix run and its control get the same vocabulary size
        extra_ids = num_docs if extra_ids is None else extra_ids
        if extra_ids < num_docs:
            raise ValueError(f"config.data.vocab.extra_ids={extra_ids} is fewer than the {num_docs} documents "
                             f"that need an identifier token (config.data.doc_ids={data.doc_ids!r})")
    vocabulary = vocab_lib.load_vocabulary(vocab_path, extra_ids or 0)
    name = "memdyn_" + hashlib.sha256(repr(sorted(data_fingerprint(data).items())).encode()).hexdigest()[:16]
    task = tasks_lib.register(name, source, vocabulary, seq_len=data.seq_len, tags=data.tags,
                              spacy_model=data.spacy_model, sentence_split=data.sentence_split,
                              doc_ids=data.doc_ids == "prefix")
    with open(vocab_path, "rb") as f:
        facts = {"vocab_file": os.path.abspath(vocab_path), "vocab_sha256": hashlib.sha256(f.read()).hexdigest(),
                 "extra_ids": int(extra_ids or 0), "num_docs": int(num_docs)}
    return task, splits, facts


def _tfds_source(data, data_dir: str):
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    cfg = data.tfds
    tfds_dir = cfg.data_dir or os.path.join(data_dir, "tfds")
    kwargs = {}
    if cfg.name == "memdyn_synthetic":
        from memdyn.data import corpus as corpus_lib
        from memdyn.data import tfds_synthetic
        corpus_config = corpus_lib.CorpusConfig(**data.synthetic.to_dict())
        builder = tfds_synthetic.build(corpus_config, tfds_dir)
        kwargs = {"config": tfds_synthetic.builder_config(corpus_config)}
        name = f"{tfds_synthetic.NAME}:{builder.version}"
    else:
        try:
            builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
        except Exception as e:  # DatasetNotFoundError and friends
            raise ValueError(f"config.data.tfds.name={cfg.name!r}: no such TFDS dataset ({type(e).__name__}: "
                             f"{str(e).splitlines()[0]})") from None
        if not builder.is_prepared():
            logging.info("preparing TFDS dataset %s in %s (downloads if TFDS must)", cfg.name, builder.data_dir)
            builder.download_and_prepare()
        name = f"{builder.name}/{builder.builder_config.name}:{builder.version}" if builder.builder_config \
            else f"{builder.name}:{builder.version}"
    available = dict(builder.info.splits)  # empty when TFDS does not know them (e.g. under tfds.testing mocks)
    for role in ("train_split", "validation_split"):
        split = cfg[role]
        if split is not None and available and split not in available:
            raise ValueError(f"config.data.tfds.{role}={split!r}: {cfg.name!r} has splits {sorted(available)}")
    features = builder.info.features
    if cfg.text_key not in features:
        raise ValueError(f"config.data.tfds.text_key={cfg.text_key!r}: {cfg.name!r} has features "
                         f"{sorted(features.keys())}")
    splits = {"train": cfg.train_split, "validation": cfg.validation_split}
    used = [s for s in splits.values() if s is not None]
    inner = seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=tfds_dir if kwargs else cfg.data_dir, splits=used,
                                 tfds_builder_kwargs=kwargs or None, caching_permitted=False)
    offsets, total = {}, 0
    for split in used:
        offsets[split] = total
        total += available[split].num_examples if available else \
            int(inner.get_dataset(split, shuffle=False).reduce(0, lambda n, _: n + 1))
    return tasks_lib.document_source(inner, cfg.text_key, offsets), splits, total, "pos" in features


def _text_source(data):
    from memdyn.data import text_files
    cfg = data.text
    files = {"train": text_files.list_files(cfg.paths)}
    if cfg.validation_paths:
        files["validation"] = text_files.list_files(cfg.validation_paths, "config.data.text.validation_paths")
    counts, offsets, total = {}, {}, 0
    for split, paths in files.items():
        counts[split] = len(text_files.read_documents(paths, cfg.format, cfg.field, cfg.min_words))
        offsets[split], total = total, total + counts[split]
    inner = text_files.data_source(files, cfg.format, cfg.field)
    splits = {"train": "train", "validation": "validation" if "validation" in files else None}
    return tasks_lib.document_source(inner, None, offsets), splits, total, False


def _vocabulary_file(data, data_dir: str, source: seqio.DataSource, train_split: str) -> str:
    if data.vocab.path:
        if not os.path.isfile(data.vocab.path):
            raise FileNotFoundError(f"config.data.vocab.path={data.vocab.path!r} does not exist")
        return data.vocab.path
    # Trained afresh on every build (stores absent): a model left by an interrupted build may have other settings.
    path = os.path.join(data_dir, "vocab.model")
    _train_vocabulary(data, source, train_split, path)
    return path


def _train_vocabulary(data, source: seqio.DataSource, train_split: str, path: str) -> None:
    texts = (t.decode("utf-8") for t in source.get_dataset(train_split, shuffle=False)
             .take(data.vocab.max_docs).map(lambda ex: ex["text"]).as_numpy_iterator())
    start = time.time()
    vocab_lib.train_vocabulary(texts, path, model_type=data.vocab.model_type, vocab_size=data.vocab.size)
    logging.info("trained a %s SentencePiece vocabulary in %.1fs: %s", data.vocab.model_type, time.time() - start,
                 path)


def train_vocabulary_file(config: config_dict.ConfigDict, path: str) -> seqio.SentencePieceVocabulary:
    """`memdyn vocab`: trains config.data.vocab's SentencePiece model on the source's training split."""
    import tempfile
    data = config.data
    if data.source not in ("tfds", "text"):
        raise ValueError(f"`memdyn vocab` trains vocabularies for config.data.source 'tfds' or 'text', not "
                         f"{data.source!r} (the synthetic corpus and seqio tasks bring their own)")
    with tempfile.TemporaryDirectory() as scratch:  # where memdyn_synthetic is built when no tfds.data_dir
        source, splits, _, _ = _tfds_source(data, scratch) if data.source == "tfds" else _text_source(data)
        _train_vocabulary(data, source, splits["train"], path)
    return vocab_lib.load_vocabulary(path)


def _user_task(data):
    cfg = data.seqio
    if cfg.module:
        _import_module(cfg.module)
    try:
        task = seqio.get_mixture_or_task(cfg.task)
    except ValueError:
        raise ValueError(f"config.data.seqio.task={cfg.task!r} is not a registered seqio Task or Mixture"
                         + ("" if cfg.module else " (set config.data.seqio.module to the module that registers "
                            "it)")) from None
    if cfg.feature not in task.output_features:
        raise ValueError(f"config.data.seqio.feature={cfg.feature!r}: task {cfg.task!r} has output features "
                         f"{sorted(task.output_features)}")
    for role in ("train_split", "validation_split"):
        if cfg[role] is not None and cfg[role] not in task.splits:
            raise ValueError(f"config.data.seqio.{role}={cfg[role]!r}: task {cfg.task!r} has splits "
                             f"{sorted(task.splits)}")
    return task, {"train": cfg.train_split, "validation": cfg.validation_split}, {}


def user_task_vocabulary(data) -> seqio.Vocabulary:
    task, _, _ = _user_task(data)
    return task.output_features[data.seqio.feature].vocabulary


def _import_module(module: str) -> None:
    """Imports a dotted module name, or a .py file by path (e.g. a config file that registers a task)."""
    try:
        if module.endswith(".py"):
            if not os.path.isfile(module):
                raise ImportError(f"no such file {module!r}")
            name = "memdyn_user_" + hashlib.sha256(os.path.abspath(module).encode()).hexdigest()[:8]
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, module)
                sys.modules[name] = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(sys.modules[name])
        else:
            importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"config.data.seqio.module={module!r} cannot be imported: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Tasks -> examples -> stores


def read_examples(task: seqio.Task, split: str, seq_len: int, feature: str, pad_id: int,
                  read_batch: int = 512) -> tracked_lib.Examples:
    """Every example of ``split`` in order, as fixed-length rows; longer ones are cut into pieces of seq_len."""
    # seed: a Mixture samples its tasks even unshuffled; a fixed seed makes that reproducible.
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, num_epochs=1, seed=0)
    has_tags, has_doc_id = "tags" in ds.element_spec, "doc_id" in ds.element_spec
    ds = ds.map(lambda ex: {k: ex[k] for k in (feature, "tags", "doc_id") if k in ex})
    documents, doc_ids = [], []
    # Examples come in ragged batches: one Python step per batch, not per example, keeps reading cheap.
    for batch in ds.ragged_batch(read_batch):
        splits = batch[feature].row_splits.numpy()
        values = batch[feature].values.numpy().astype(np.int32)
        tag_values = batch["tags"].values.numpy() if has_tags else None
        for i in range(len(splits) - 1):
            piece = slice(splits[i], splits[i + 1])
            documents.append((values[piece], tag_values[piece] if has_tags else None))
        doc_ids += (batch["doc_id"].numpy().tolist() if has_doc_id
                    else list(range(len(doc_ids), len(doc_ids) + len(splits) - 1)))
    if not documents:
        raise ValueError(f"seqio task {task.name!r} split {split!r} yielded no examples")
    tokens, tags, doc_index = chunk_documents(documents, seq_len, pad_id)  # longer examples cut into pieces
    return tracked_lib.Examples(tokens, np.asarray(doc_ids, np.int64)[doc_index], tags if has_tags else None)


def split_heldout(examples: tracked_lib.Examples, special_docs: int) -> dict[str, tracked_lib.Examples]:
    """validation / control / special by document, in document order (see the module docstring)."""
    docs = list(dict.fromkeys(examples.doc_ids.tolist()))
    k = special_docs
    if not 0 <= 2 * k < len(docs):
        raise ValueError(f"config.data.special_docs={k}: twice it (special + control) must be below the "
                         f"{len(docs)} held-out documents")
    groups = {"validation": docs[:len(docs) - 2 * k]}
    if k:
        groups["control"], groups["special"] = docs[len(docs) - 2 * k:len(docs) - k], docs[len(docs) - k:]
    return {name: examples.take(np.flatnonzero(np.isin(examples.doc_ids, ids))) for name, ids in groups.items()}


def hold_out_tail(examples: tracked_lib.Examples, num_docs: int) -> tuple[tracked_lib.Examples,
                                                                           tracked_lib.Examples]:
    """(train, held out): the last ``num_docs`` documents of a source without a validation split."""
    docs = list(dict.fromkeys(examples.doc_ids.tolist()))
    if not 0 < num_docs < len(docs):
        raise ValueError(f"config.data.validation_docs={num_docs}: the source has no validation split, so this "
                         f"many of its {len(docs)} training documents are held out; it must be in (0, {len(docs)})")
    held = np.isin(examples.doc_ids, docs[len(docs) - num_docs:])
    return examples.take(np.flatnonzero(~held)), examples.take(np.flatnonzero(held))


def write_stores(data_dir: str, train: tracked_lib.Examples, heldout: dict[str, tracked_lib.Examples],
                 tracked, manifest: dict, *, vocab_size: int) -> dict[str, ExampleStore]:
    """Plants the tracked sets, numbers the examples and writes every store and membership.csv."""
    next_doc = int(max(train.doc_ids.max(), *(s.doc_ids.max() for s in heldout.values()))) + 1
    planted = tracked_lib.plant(train, tracked, vocab_size=vocab_size, num_special=manifest["num_special"],
                                eos_id=manifest["eos_id"], pad_id=manifest["pad_id"], next_doc_id=next_doc)
    splits = {"train": planted.train, **heldout, **planted.sets}
    first_id, next_id = {}, 0
    for split, ex in splits.items():  # ids continue across sets so that an example id is unique within a run
        first_id[split], next_id = next_id, next_id + len(ex)
    rows = [(name, first_id["train"] + row, first_id[name] + index, int(planted.train.doc_ids[row]))
            for name, row, index in planted.membership]
    table = pd.DataFrame(rows, columns=["set", "example_id", "tracked_example_id", "doc_id"])
    tmp = os.path.join(data_dir, ".membership.csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, os.path.join(data_dir, "membership.csv"))
    stores = {}
    for split in [*heldout, *planted.sets, "train"]:  # train last: its manifest marks the stores complete
        ex = splits[split]
        if os.path.exists(os.path.join(data_dir, split)):  # left by an interrupted build (train is absent)
            shutil.rmtree(os.path.join(data_dir, split))
        extra = {"dup_counts": tracked_lib.duplication_counts(ex.tokens)} if split == "train" else {}
        stores[split] = write_store(os.path.join(data_dir, split), tokens=ex.tokens, tags=ex.tags,
                                    doc_ids=ex.doc_ids, example_ids=first_id[split] + np.arange(len(ex)),
                                    manifest=dict(manifest, split=split), **extra)
    return stores


def build(config: config_dict.ConfigDict, data_dir: str) -> None:
    """Builds the stores of a tfds/text/seqio source in ``data_dir`` unless they exist (and match the config)."""
    data = config.data
    fingerprint = data_fingerprint(data)
    existing = check_reusable(data_dir, fingerprint)
    if existing is not None:
        _check_vocabulary(data, existing, data_dir)
        return
    start = time.time()
    task, splits, facts = build_task(config, data_dir)
    feature = data.seqio.feature if data.source == "seqio" else "targets"
    vocabulary = task.output_features[feature].vocabulary
    mask = vocab_lib.mask_id(vocabulary)
    manifest = {"source": data.source, "task": task.name, "data": fingerprint, "vocab_size": vocabulary.vocab_size,
                "pad_id": vocabulary.pad_id, "eos_id": vocabulary.eos_id, "unk_id": vocabulary.unk_id,
                # ids below num_special are never drawn as masked-LM random replacements
                "mask_id": mask, "num_special": mask + 1 if mask is not None else 3,
                "tag_names": _tag_names(data), **facts}
    train = read_examples(task, splits["train"], data.seq_len, feature, vocabulary.pad_id)
    if splits["validation"] is None:
        train, heldout = hold_out_tail(train, data.validation_docs)
    else:
        heldout = read_examples(task, splits["validation"], data.seq_len, feature, vocabulary.pad_id)
    base_size = vocabulary.vocab_size - getattr(vocabulary, "extra_ids", 0)
    os.makedirs(data_dir, exist_ok=True)
    if "vocab_file" in facts and os.path.abspath(facts["vocab_file"]) != os.path.abspath(
            os.path.join(data_dir, "vocab.model")):
        shutil.copyfile(facts["vocab_file"], os.path.join(data_dir, ".vocab.model.tmp"))
        os.replace(os.path.join(data_dir, ".vocab.model.tmp"), os.path.join(data_dir, "vocab.model"))
    stores = write_stores(data_dir, train, split_heldout(heldout, data.special_docs), data.tracked, manifest,
                          vocab_size=base_size)
    logging.info("materialized %s into %s in %.1fs: %s", task.name, data_dir, time.time() - start,
                 ", ".join(f"{k} {v.num_examples}" for k, v in stores.items()))


def _tag_names(data) -> list[str]:
    from memdyn.data import corpus as corpus_lib
    from memdyn.data import tagging
    return {"gold": list(corpus_lib.POS_TAGS), "spacy": list(tagging.SPACY_TAGS)}.get(data.tags, [])


def _check_vocabulary(data, train: ExampleStore, data_dir: str) -> None:
    """A vocabulary named in the config must be the one the stored tokens come from."""
    if data.source == "seqio" or not data.vocab.path:
        return
    with open(data.vocab.path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != train.manifest.get("vocab_sha256"):
        raise ValueError(f"config.data.vocab.path={data.vocab.path!r} does not match the vocabulary the stores "
                         f"in {data_dir!r} were built with (sha256 {digest[:12]} != "
                         f"{str(train.manifest.get('vocab_sha256'))[:12]})")
