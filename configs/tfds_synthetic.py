"""The embedded corpus read the way any TFDS corpus is: the ``memdyn_synthetic`` TFDS dataset (built offline on
first use), a word-level SentencePiece vocabulary trained on it (one word, one token), gold parts of speech
aligned to the tokens, and the unique-identifier experiment of Tirumala et al. as an argument:

    memdyn train --config=configs/tfds_synthetic.py --workdir=runs/tfds            # plain
    memdyn train --config=configs/tfds_synthetic.py:doc_ids --workdir=runs/ids     # "document ID <id>" prefixes
    memdyn train --config=configs/tfds_synthetic.py:control --workdir=runs/ctrl    # enlarged vocabulary, ids unused

The control enlarges the vocabulary by as many ids as the doc_ids run adds and changes nothing else.
"""

from ml_collections import config_dict

from memdyn.configs import base

VARIANTS = ("plain", "doc_ids", "control")


def get_config(variant: str = "plain"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/tfds_synthetic.py:{variant}: expected one of {VARIANTS}")
    c = base.get_config()
    c.data.source = "tfds"
    c.data.tfds.name = "memdyn_synthetic"
    c.data.vocab.model_type = "word"
    c.data.vocab.size = config_dict.placeholder(int)  # None: every word of the corpus
    c.data.tags = "gold"
    c.data.doc_ids = {"plain": "none", "doc_ids": "prefix", "control": "control"}[variant]
    return c
