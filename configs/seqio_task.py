"""A user's own seqio Task, used unchanged: this file registers one and names itself as the module to import.

``memdyn_example_bytes`` reads the embedded synthetic corpus through a seqio.FunctionDataSource and tokenizes it
with seqio's ByteVocabulary (one token per UTF-8 byte) using seqio's own preprocessors: nothing memdyn-specific.
To use your task instead, point data.seqio.module at the module (a dotted name on sys.path, or a .py file) that
registers it and data.seqio.task at its name:

    memdyn train --config=configs/seqio_task.py --workdir=runs/bytes
    memdyn train --config=configs/seqio_task.py --workdir=runs/mine \
        --config.data.seqio.module=my_project.tasks --config.data.seqio.task=my_task
"""

import functools
import os

import seqio
import tensorflow as tf

from memdyn.configs import base
from memdyn.data.build import corpus as corpus_lib

TASK = "memdyn_example_bytes"


def _documents(split: str, shuffle_files: bool, seed=None, num_docs: int = 300) -> tf.data.Dataset:
    del shuffle_files, seed  # a fixed corpus in a fixed order
    corpus = corpus_lib.generate(corpus_lib.CorpusConfig(num_train_docs=num_docs, num_validation_docs=60))
    docs = corpus.train if split == "train" else corpus.validation
    return tf.data.Dataset.from_tensor_slices(
        {"targets": [corpus.decode(d.tokens[d.tokens != corpus_lib.EOS_ID]) for d in docs]}
    )


if TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(functools.partial(_documents), splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
    )


def get_config():
    c = base.get_config()
    c.data.source = "seqio"
    c.data.seqio.task = TASK
    c.data.seqio.module = os.path.abspath(__file__)
    c.data.seq_len = 128  # bytes
    c.model.size = "tiny"
    return c
