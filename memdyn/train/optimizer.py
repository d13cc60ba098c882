"""The optimizer of a run: AdamW with weight decay on matrices only, optional global-norm clipping, and the
learning-rate schedule (``config.optimizer``)."""

from __future__ import annotations

import jax
import optax
from ml_collections import config_dict


def make_schedule(opt: config_dict.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``opt.lr``, then constant / linear / cosine / polynomial decay to the end."""
    warmup = int(opt.warmup_steps)
    decay_steps = max(num_steps - warmup, 1)
    end = opt.lr * opt.end_lr_fraction
    main = {
        "constant": optax.constant_schedule(opt.lr),
        "linear": optax.linear_schedule(opt.lr, end, decay_steps),
        "cosine": optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_fraction),
        "polynomial": optax.polynomial_schedule(opt.lr, end, opt.power, decay_steps),
    }[opt.schedule]
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])


DECAYED = ("kernel", "embed", "unembed")  # parameter names (or name endings) that weight decay applies to


def decays(path) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return name.endswith(DECAYED)


def make_optimizer(opt: config_dict.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(opt, num_steps)

    # Decay matrices only (kernels, embeddings), never biases or layer-norm parameters. By name: a bias may be 2-D
    # ([heads, head_dim]) and a scanned model's biases carry a layers axis.
    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, p: decays(path), params)

    adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw) if opt.grad_clip > 0 else adamw
    return tx, schedule
