"""Building a run's data: sources -> example stores in <workdir>/data/, once, before any compute.

Every source goes through one path (``build``): its documents become fixed-length ``Examples`` (the synthetic
corpus chunked by ``chunking.chunk_documents``; the tfds, text and seqio sources read from a seqio Task whose
preprocessors chunk, see ``tasks``), the held-out documents are split into validation / control / special, the
tracked sets are planted, and ``stores.write_stores`` writes every store, the vocabulary and membership.csv.

Layout of <workdir>/data/ (every store written atomically, see memdyn.data.store):
  train/  validation/  control/  special/  [canaries/  duplicates/]   example stores
  vocab.txt          the synthetic corpus's words, one per line (id = line number)
  vocab.model        the SentencePiece model the tokens come from (the tfds and text sources)
  membership.csv     set,example_id,tracked_example_id,doc_id: training rows that are copies of a tracked example
  tfds/              the built memdyn_synthetic TFDS dataset, when config.data.tfds.data_dir is unset
Stores already there are reused when their manifest's data fingerprint matches the config; others are refused.
The ``special`` set (forgetting experiments) is the last ``data.special_docs`` held-out documents, ``control`` the
as many before them (never inserted, evaluated beside it), ``validation`` the rest.
"""

from __future__ import annotations

import json
import logging
import os
import time

from ml_collections import config_dict

from memdyn.data import vocab as vocab_lib
from memdyn.data.build import chunking, corpus as corpus_lib, stores
from memdyn.data.run_data import RunData, open_run_data
from memdyn.data.store import ExampleStore

_COMMON_FIELDS = ("source", "seq_len", "special_docs", "validation_docs", "doc_ids", "sentence_split", "tags",
                  "spacy_model", "tracked")


def prepare(config: config_dict.ConfigDict, workdir: str) -> RunData:
    """The data of the run in ``workdir``, built on first use."""
    if config.data.source == "imported":
        raise ValueError("config.data.source='imported' is a model without training data (from memdyn "
                         "import-hf): score sequences with `memdyn extract --tokens/--indexed`; it does not train")
    if config.data.source != "store":
        build(config, os.path.join(workdir, "data"))
    return open_run_data(workdir, config)


def build(config: config_dict.ConfigDict, data_dir: str) -> None:
    """Builds the stores of ``config.data`` in ``data_dir`` unless they exist (and match the config)."""
    from memdyn.data.build import sources  # seqio and TensorFlow: only when a store is built or checked
    data = config.data
    fingerprint = data_fingerprint(data)
    existing = check_reusable(data_dir, fingerprint)
    if existing is not None:
        sources.check_vocabulary(data, existing, data_dir)
        return
    start = time.time()
    if data.source == "synthetic":
        train, heldout, manifest, base_vocab_size, write_vocabulary = _synthetic(config)
    else:
        train, heldout, manifest, base_vocab_size, write_vocabulary = sources.task_examples(config, data_dir)
    manifest = {"source": data.source, "data": fingerprint, **manifest}
    os.makedirs(data_dir, exist_ok=True)
    write_vocabulary(data_dir)
    written = stores.write_stores(data_dir, train, stores.split_heldout(heldout, data.special_docs), data.tracked,
                                  manifest, base_vocab_size=base_vocab_size)
    logging.info("built the %s data in %s in %.1fs: %s", data.source, data_dir, time.time() - start,
                 ", ".join(f"{k} {v.num_examples}" for k, v in written.items()))


def _synthetic(config: config_dict.ConfigDict):
    """The embedded corpus as examples (see ``sources.task_examples``); its words are written as vocab.txt."""
    corpus = corpus_lib.generate(corpus_lib.CorpusConfig(**config.data.synthetic.to_dict()))
    manifest = {"vocab_size": len(corpus.vocab), **vocab_lib.SPECIAL_IDS, "num_special": vocab_lib.NUM_SPECIAL,
                "tag_names": list(corpus_lib.POS_TAGS)}
    train, heldout = (chunking.chunk_documents([(d.tokens, d.tags) for d in docs], [d.doc_id for d in docs],
                                               config.data.seq_len, vocab_lib.PAD_ID, config.data.get("chunk_len"))
                      for docs in (corpus.train, corpus.validation))

    def write_vocabulary(data_dir: str) -> None:
        vocab_lib.write_words(os.path.join(data_dir, "vocab.txt"), corpus.vocab)

    return train, heldout, manifest, len(corpus.vocab), write_vocabulary


def data_fingerprint(data: config_dict.ConfigDict) -> dict:
    """The part of config.data that decides the stores' contents (compared when a store is reused)."""
    fields = {name: data[name] for name in _COMMON_FIELDS}
    if data.get("chunk_len") is not None:  # left out when unset: stores built before the field existed still match
        fields["chunk_len"] = data.chunk_len
    fields[data.source] = data[data.source]
    if data.source in ("tfds", "text"):  # the vocabulary file is checked by content (check_vocabulary), not path
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
