"""What a run is before it trains: the summary ``memdyn train --dry_run`` prints, and every run logs as it starts.

Model shape and parameters, training FLOPs per token, mesh and parameter shardings, data and steps per epoch, the
config fields that differ from configs/base.py, and an estimate of memory per device:
  parameters and optimizer state   exact: the bytes of each array's shard on one device
  gradients                        exact: the size of the parameters (float32, sharded like them); twice that
                                   with microbatches (the running sum and the microbatch's own)
  activations                      an estimate of what the backward pass keeps without rematerialization, per
                                   layer B'·L·(14·D + k·F' + H'·L) values (k = 3 GELU, 5 SwiGLU; B' = rows of one
                                   microbatch per data-parallel shard, F' and H' the hidden units and heads per
                                   tensor shard), plus 3·B'·L·V' float32 logits (logits, softmax, gradient). With
                                   model.remat=block each layer keeps only its input (B'·L·D values) and one
                                   layer's activations at a time are recomputed; with dots / dots_no_batch the
                                   layers keep their matmul outputs, per layer B'·L·(7·D + F' + H'·L) values
                                   (dots_no_batch: B'·L·(6·D + F'))
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from memdyn import config as config_lib
from memdyn.model import sharding, sizes


def _device_bytes(tree) -> int:
    """Bytes of one device's shards of every array in ``tree`` (ShapeDtypeStructs with shardings)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def activation_bytes(run) -> int:
    """The activation estimate of the module docstring, per device."""
    shape, mesh = run.shape, run.mesh
    tensor = mesh.shape["tensor"]
    batch = run.config.batch_size // sharding.data_parallel_size(mesh) // run.config.grad_accum
    length = run.config.data.seq_len - (1 if run.config.model.causal else 0)
    per_value = np.dtype(run.config.model.dtype).itemsize
    heads, d_ff = max(shape.num_heads // tensor, 1), shape.d_ff // tensor
    hidden = (5 if shape.mlp == "swiglu" else 3) * d_ff
    per_layer = batch * length * (14 * shape.d_model + hidden + heads * length)
    kept = {
        "none": per_layer,
        "block": batch * length * shape.d_model,
        "dots": batch * length * (7 * shape.d_model + d_ff + heads * length),
        "dots_no_batch": batch * length * (6 * shape.d_model + d_ff),
    }[run.config.model.remat]
    recomputed = 0 if run.config.model.remat == "none" else per_layer  # one layer's, during its backward pass
    logits = 3 * batch * length * math.ceil(shape.vocab_size / tensor) * 4
    return (shape.num_layers * kept + recomputed) * per_value + logits


def non_default_fields(config) -> list[str]:
    """``field: value (base: default)`` for every field that differs from configs/base.py."""
    base = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py")).to_dict()
    out = []
    for line in config_lib.differences(base, config.to_dict()):  # "field: <base> != <config>"
        name, _, values = line.partition(": ")
        default, _, value = values.partition(" != ")
        out.append(f"{name}: {value} (base: {default})")
    return out


def describe(run, requested_config) -> str:
    """The summary of a built run (``core.build_run``); ``requested_config`` is the config before resolving."""
    c, shape = run.config, run.shape
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    params, opt = _device_bytes(run.abstract_params), _device_bytes(run.abstract_opt_state)
    acts = activation_bytes(run)
    grads = params * (2 if c.grad_accum > 1 else 1)  # with microbatches: the running sum and the current one
    length = c.data.seq_len - (1 if c.model.causal else 0)
    with run.context():
        specs = {
            name: str(s.spec)
            for name, s in (
                ("embed", run.param_shardings["embed"]),
                (
                    "mlp in_kernel",
                    run.param_shardings["blocks" if c.model.scan_layers else "block_00"]["mlp"]["in_kernel"],
                ),
            )
        }
    epochs = c.num_steps / run.order.steps_per_epoch
    lines = [
        f"model {c.model.size}: {c.model.params:,} parameters, {shape.num_layers} layers x d_model {shape.d_model}, "
        f"{shape.num_heads} heads, d_ff {shape.d_ff} ({shape.mlp}), vocabulary {shape.vocab_size}, "
        f"{'causal' if c.model.causal else 'masked'} LM, {c.model.dtype}",
        f"training FLOPs per token: {sizes.train_flops_per_token(shape, length):,.0f} "
        f"({sizes.train_flops_per_token(shape, length) * c.batch_size * length:,.3g} per step)",
        f"mesh {dict(run.mesh.shape)} on {run.mesh.devices.size} device(s); shardings: "
        + ", ".join(f"{k} {v}" for k, v in specs.items()),
        f"data: {run.data.train.num_examples:,} training examples of {c.data.seq_len} tokens, batch {c.batch_size}, "
        f"{run.order.steps_per_epoch} steps per epoch; {c.num_steps} steps = {epochs:.2f} epochs; sets "
        f"{sorted(run.data.sets)}",
        f"memory per device: parameters {mib(params)}, optimizer state {mib(opt)}, gradients {mib(grads)}, "
        f"activations ≈ {mib(acts)} (estimate"
        + (f", {c.grad_accum} microbatches" if c.grad_accum > 1 else "")
        + (f", remat {c.model.remat}" if c.model.remat != "none" else "")
        + f"), total ≈ {mib(params + grads + opt + acts)}",
    ]
    changed = non_default_fields(requested_config)
    lines.append("config fields that differ from configs/base.py:" + ("" if changed else " none"))
    lines += [f"  {line}" for line in changed]
    return "\n".join(lines)
