"""Predictable memorization (Biderman et al. 2023) at CPU scale: causal LMs of several sizes on the embedded
corpus, some of whose documents occur many times, with checkpoints kept at fixed fractions of training, so that
the memorized set of every (size, checkpoint) can be compared with the largest model's final one.

The argument is the model size (default ``tiny``). Every size trains the same steps on the same data order:

    memdyn train --config=configs/predict.py:small --workdir=runs/predict/model.size=small,seed=0
    memdyn extract --workdir=runs/predict/model.size=small,seed=0 --set=train --step=240 --score

``launch/predict.py`` trains sizes x seeds, scores every training sequence at every kept checkpoint, and runs
``memdyn analyze predict``.
"""

from memdyn.configs import base

NUM_STEPS = 720  # 30 epochs of the ~24 steps the corpus below makes at batch 32
KEPT = (90, 180, 360, 540, NUM_STEPS)  # 1/8, 1/4, 1/2, 3/4 and all of training


def get_config(size: str = "tiny"):
    c = base.get_config()
    c.model.size = size
    c.data.seq_len = 64  # prompt 32 + continuation 32, Biderman et al.'s k = 32
    c.data.synthetic.num_train_docs = 200
    c.data.synthetic.num_validation_docs = 50
    c.data.special_docs = 0
    c.data.tracked.duplicated_docs = 20  # 20 of the training documents ...
    c.data.tracked.duplicate_count = 8  # ... occur 8 times per epoch, the others once
    c.num_steps = NUM_STEPS
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.eval.every = 0
    c.eval.sets = ()
    c.eval.epoch_sets = ()  # memorization is read from `memdyn extract` at the kept checkpoints
    c.checkpoint.every = 0
    c.checkpoint.keep = 1
    c.checkpoint.keep_steps = KEPT
    c.record_examples = False
    return c
