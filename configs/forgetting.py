"""Forgetting of a special set (Tirumala et al. 2022, §forgetting) at CPU scale on the embedded corpus.

A parent run trains for several epochs and keeps checkpoints at the fork points; a fork resumes from one
(``--init_from=<parent>@<step>``), trains the held-out ``special`` set as extra update(s) and keeps training
normally while M on the special set is evaluated every ``insert.eval_every`` steps. Its control is a sham fork
(``--config.insert.sham=True``): the same evaluations without the inserted updates.

    memdyn train --config=configs/forgetting.py:tiny --workdir=runs/parent --config.num_steps=224 \
        --config.checkpoint.keep_steps='(224,)'
    memdyn train --config=configs/forgetting.py:tiny --workdir=runs/fork --init_from=runs/parent@224 \
        --config.insert.at_step=224 --config.num_steps=504
    memdyn train --config=configs/forgetting.py:tiny --workdir=runs/sham --init_from=runs/parent@224 \
        --config.insert.at_step=224 --config.num_steps=504 --config.insert.sham=True

``launch/forgetting.py`` runs the whole protocol (sizes, insertion epochs, repeated and spaced insertion).
The argument is the size preset (default ``tiny``).
"""

from memdyn.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config()
    c.model.size = size
    c.data.synthetic.num_train_docs = 400  # 890 examples: 28 steps per epoch at batch 32
    c.data.special_docs = 16  # the special set: 16 held-out documents (≈33 examples)
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.eval.every = 0
    c.eval.epoch_sets = ("validation",)  # once an epoch
    c.insert.eval_every = 5
    c.checkpoint.every = 0  # the end of a run and its fork points (checkpoint.keep_steps) are enough
    c.num_steps = 224  # 8 epochs: the launcher sets the real lengths
    return c
