"""Memorization dynamics across sizes (Tirumala et al. 2022, §3) at CPU scale on the embedded corpus.

A small fixed training set (200 synthetic documents, 439 examples of 64 tokens: 14 steps per epoch at batch
32) is trained for 40 epochs; the whole training set (M(f)) and validation are evaluated after every epoch, so
the overfitting point (first epoch where validation perplexity rises) and M(f) there can be read off. Sweep
sizes and seeds:

    memdyn sweep --config=configs/memorization.py --workdir=runs/memorization \
        --sweep=model.size=nano,micro,tiny,small --sweep=seed=0,1,2
    memdyn analyze memorization --sweep=runs/memorization

The argument is the size preset (default ``tiny``).
"""

from memdyn.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config()
    c.model.size = size
    c.data.synthetic.num_train_docs = 200
    c.data.synthetic.num_validation_docs = 100
    c.data.special_docs = 0
    c.num_steps = 560  # 40 epochs of 14 steps
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.eval.every = 0
    c.eval.epoch_sets = ("train", "validation")  # M(f) of the training set and validation after every epoch
    c.checkpoint.every = 0  # the end of the run is enough
    return c
