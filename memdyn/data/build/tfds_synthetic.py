"""The embedded synthetic corpus as a TFDS dataset, ``memdyn_synthetic``, built offline from a seed.

Each example is one document: ``text`` (words joined by single spaces, no ``<eos>``), ``pos`` (the gold part of
speech of each whitespace word, names from memdyn.data.corpus.POS_TAGS), ``doc_id`` and ``kind`` ("normal",
"duplicate", "canary"; copies of a duplicated document are separate examples sharing a doc_id). Splits: train and
validation. The builder config carries the corpus parameters (memdyn.data.corpus.CorpusConfig); its name is a
hash of them, so datasets drawn with different parameters live side by side under one data_dir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import numpy as np
import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
import tensorflow_datasets as tfds

from memdyn.data.build import corpus as corpus_lib

NAME = "memdyn_synthetic"


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    corpus: dict = dataclasses.field(default_factory=dict)  # CorpusConfig fields


def builder_config(corpus_config: corpus_lib.CorpusConfig) -> SyntheticConfig:
    fields = dataclasses.asdict(corpus_config)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return SyntheticConfig(name=f"c{digest}", description=json.dumps(fields, sort_keys=True), corpus=fields)


class MemdynSynthetic(tfds.core.GeneratorBasedBuilder):
    """memdyn's synthetic POS-tagged corpus (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # No registered configs: every corpus config is passed in as an object (``builder_config``), default included.

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "pos": tfds.features.Sequence(tfds.features.ClassLabel(names=list(corpus_lib.POS_TAGS))),
                "doc_id": tfds.features.Scalar(dtype=np.int64),
                "kind": tfds.features.Text(),
            }),
            supervised_keys=None,
            homepage="https://github.com/memdyn/memdyn",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated
        corpus = corpus_lib.generate(corpus_lib.CorpusConfig(**self.builder_config.corpus))
        return {"train": self._generate_examples(corpus, corpus.train),
                "validation": self._generate_examples(corpus, corpus.validation)}

    def _generate_examples(self, corpus: corpus_lib.Corpus, documents):
        for index, doc in enumerate(documents):
            words = doc.tokens != corpus_lib.EOS_ID  # the end of a document is the tokenizer's EOS
            yield index, {"text": " ".join(corpus.vocab[int(t)] for t in doc.tokens[words]),
                          "pos": [corpus_lib.POS_TAGS[int(t)] for t in doc.tags[words]],
                          "doc_id": doc.doc_id, "kind": doc.kind}


class _QuietCustomConfig(logging.Filter):
    """TFDS warns on every open that a config object is "custom"; for this builder that is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Using custom data configuration: SyntheticConfig" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietCustomConfig())


def build(corpus_config: corpus_lib.CorpusConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) the dataset for ``corpus_config`` under ``data_dir``."""
    builder = MemdynSynthetic(config=builder_config(corpus_config), data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder
