"""Unique identifiers and memorization speed (Tirumala et al. 2022): the embedded corpus read through TFDS with a
word vocabulary, in three conditions that see the same documents cut at the same places:

    none     the original vocabulary
    control  the vocabulary enlarged by one id per document, the new ids never used
    prefix   "document ID <id>" before every example, <id> the document's own new id

Every condition cuts documents into pieces of ``data.chunk_len`` = 61 tokens (a 64-token row less the 3-token
prefix), so the rows hold the same content tokens, the prefix run's shifted right by the prefix. The prefix run
also reports M over the content alone (``train@content`` rows of eval.csv: targets after the prefix and the
first content token, exactly the tokens the other two conditions score). 100 training documents, 40 epochs, the
training set and validation evaluated after every epoch:

    memdyn sweep --config=configs/unique_ids.py --workdir=runs/unique_ids \
        --sweep=data.doc_ids=none,control,prefix --sweep=seed=0,1,2
    memdyn analyze unique_ids --sweep=runs/unique_ids

The argument is the size preset (default ``small``).
"""

from memdyn.configs import memorization, tfds_synthetic

PREFIX_LEN = 3  # "document", "ID" and <id>: one token each in a word vocabulary


def get_config(size: str = "small"):
    c = tfds_synthetic.get_config()
    sized = memorization.get_config(size)
    for field in ("model", "optimizer", "eval", "checkpoint"):
        c[field] = sized[field]
    c.data.synthetic.num_train_docs = 100
    c.data.synthetic.num_validation_docs = 100
    c.data.special_docs = 0
    c.data.chunk_len = c.data.seq_len - PREFIX_LEN
    c.data.tags = "none"
    c.num_steps = 280  # 40 epochs of 7 steps (223 examples at batch 32)
    return c
