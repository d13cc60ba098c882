"""The tfds, text and seqio sources: config.data -> a seqio Task -> examples (``task_examples``).

``tfds`` and ``text`` get a memdyn task (memdyn.data.build.tasks) over a TFDS dataset or local text files, with a
SentencePiece vocabulary trained on first use (or ``config.data.vocab.path``); ``seqio`` is a user's registered
Task or Mixture, used unchanged. Everything is checked before the task is read.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import time

import numpy as np
import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
import seqio
from ml_collections import config_dict

from memdyn.rundir import runs
from memdyn.data import vocab as vocab_lib
from memdyn.data.build import tasks as tasks_lib
from memdyn.data.build.chunking import Examples, chunk_documents
from memdyn.data.build.stores import hold_out_tail
from memdyn.data.store import ExampleStore

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
        from memdyn.data.build import tagging
        tagging.check_available(data.spacy_model)
    vocab_path = _vocabulary_file(data, data_dir, source, splits["train"])
    extra_ids = data.vocab.extra_ids
    if data.doc_ids != "none":  # the prefix run and its control get the same vocabulary size
        extra_ids = num_docs if extra_ids is None else extra_ids
        if extra_ids < num_docs:
            raise ValueError(f"config.data.vocab.extra_ids={extra_ids} is fewer than the {num_docs} documents "
                             f"that need an identifier token (config.data.doc_ids={data.doc_ids!r})")
    vocabulary = vocab_lib.load_vocabulary(vocab_path, extra_ids or 0)
    from memdyn.data.build import data_fingerprint
    name = "memdyn_" + hashlib.sha256(repr(sorted(data_fingerprint(data).items())).encode()).hexdigest()[:16]
    task = tasks_lib.register(name, source, vocabulary, seq_len=data.seq_len, tags=data.tags,
                              spacy_model=data.spacy_model, sentence_split=data.sentence_split,
                              doc_ids=data.doc_ids == "prefix", chunk_len=data.get("chunk_len"))
    with open(vocab_path, "rb") as f:
        facts = {"vocab_file": os.path.abspath(vocab_path), "vocab_sha256": hashlib.sha256(f.read()).hexdigest(),
                 "extra_ids": int(extra_ids or 0), "num_docs": int(num_docs),
                 # the leading positions of every row that are not the document's own tokens
                 "id_prefix_len": tasks_lib.doc_id_prefix_len(vocabulary) if data.doc_ids == "prefix" else 0}
    return task, splits, facts


def _tfds_source(data, data_dir: str):
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    cfg = data.tfds
    tfds_dir = cfg.data_dir or os.path.join(data_dir, "tfds")
    kwargs = {}
    if cfg.name == "memdyn_synthetic":
        from memdyn.data.build import corpus as corpus_lib
        from memdyn.data.build import tfds_synthetic
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
    from memdyn.data.build import text_files
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
                  read_batch: int = 512) -> Examples:
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
    return chunk_documents(documents, doc_ids, seq_len, pad_id)  # examples longer than seq_len cut into pieces


def task_examples(config: config_dict.ConfigDict, data_dir: str):
    """(train examples, held-out examples, manifest facts, base vocabulary size, vocabulary writer) of a tfds,
    text or seqio source (see memdyn.data.build.build)."""
    data = config.data
    task, splits, facts = build_task(config, data_dir)
    feature = data.seqio.feature if data.source == "seqio" else "targets"
    vocabulary = task.output_features[feature].vocabulary
    mask = vocab_lib.mask_id(vocabulary)
    manifest = {"task": task.name, "vocab_size": vocabulary.vocab_size, "pad_id": vocabulary.pad_id,
                "eos_id": vocabulary.eos_id, "unk_id": vocabulary.unk_id, "mask_id": mask,
                "num_special": mask + 1 if mask is not None else 3, "tag_names": _tag_names(data), **facts}
    train = read_examples(task, splits["train"], data.seq_len, feature, vocabulary.pad_id)
    if splits["validation"] is None:
        train, heldout = hold_out_tail(train, data.validation_docs)
    else:
        heldout = read_examples(task, splits["validation"], data.seq_len, feature, vocabulary.pad_id)

    def write_vocabulary(target_dir: str) -> None:  # the model the tokens come from, beside the stores
        target = os.path.join(target_dir, "vocab.model")
        if "vocab_file" in facts and os.path.abspath(facts["vocab_file"]) != os.path.abspath(target):
            runs.atomic_write(target, lambda tmp: shutil.copyfile(facts["vocab_file"], tmp))

    return train, heldout, manifest, vocabulary.vocab_size - getattr(vocabulary, "extra_ids", 0), write_vocabulary


def _tag_names(data) -> list[str]:
    from memdyn.data.build import corpus as corpus_lib
    from memdyn.data.build import tagging
    return {"gold": list(corpus_lib.POS_TAGS), "spacy": list(tagging.SPACY_TAGS)}.get(data.tags, [])


def check_vocabulary(data, train: ExampleStore, data_dir: str) -> None:
    """A vocabulary named in the config must be the one the stored tokens come from."""
    if data.source == "seqio" or not data.vocab.path:
        return
    with open(data.vocab.path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != train.manifest.get("vocab_sha256"):
        raise ValueError(f"config.data.vocab.path={data.vocab.path!r} does not match the vocabulary the stores "
                         f"in {data_dir!r} were built with (sha256 {digest[:12]} != "
                         f"{str(train.manifest.get('vocab_sha256'))[:12]})")
