"""Gradient accumulation (``config.grad_accum``): one step's gradient and metrics from k microbatches in turn,
so that only one microbatch's activations are alive at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memdyn.data.feeder import Batch


def accumulated_grads(apply, params, batch: Batch, prepared: dict, k: int):
    """The gradient of the whole batch's mean loss, from k microbatches one after another (one microbatch's
    activations at a time), and the whole batch's metrics. Microbatch i holds rows i, i + k, i + 2k, ...: each
    device's rows are contiguous, so every microbatch takes B / (k * devices) rows of every device."""

    def split(x):  # [B, ...] -> [k, B / k, ...]
        return None if x is None else jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    def one(grad_sum, micro):
        micro_batch, micro_prepared = micro

        def loss_sum(p):  # the loss summed over the microbatch's positions: the sum of the k is the batch's
            m = apply(p, micro_batch, micro_prepared)
            return m["loss"] * m["loss_tokens"], m

        grads, m = jax.grad(loss_sum, has_aux=True)(params)
        return jax.tree.map(jnp.add, grad_sum, grads), m

    micro = jax.tree.map(split, (dict(batch), prepared))
    zeros = jax.tree.map(jnp.zeros_like, params)
    grad_sum, stacked = jax.lax.scan(one, zeros, micro)
    loss_tokens = stacked["loss_tokens"].sum()
    grads = jax.tree.map(lambda g: g / jnp.maximum(loss_tokens, 1.0), grad_sum)
    return grads, combine(stacked, k)


def combine(stacked: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """The whole batch's metrics from the k microbatches' (each stacked on a leading axis of k): per-example
    arrays back in batch order, counts summed, means weighted by their counts."""
    out = {}
    for key, value in stacked.items():
        if key.endswith("_B"):  # [k, B / k] -> rows in batch order (microbatch i held rows i, i + k, ...)
            out[key] = jnp.swapaxes(value, 0, 1).reshape(-1, *value.shape[2:])
        elif key.endswith("_T") or key == "loss_tokens" or key.endswith("num_tokens"):
            out[key] = value.sum(0)
        elif key == "loss":
            out[key] = (value * stacked["loss_tokens"]).sum() / jnp.maximum(stacked["loss_tokens"].sum(), 1.0)
        elif key.endswith("mem_update"):
            counts = stacked[key[: -len("mem_update")] + "num_tokens"]
            out[key] = (value * counts).sum() / jnp.maximum(counts.sum(), 1.0)
        else:
            raise ValueError(
                f"config.grad_accum={k}: no rule combines the step metric {key!r} over microbatches "
                "(per-example metrics end in _B, per-tag counts in _T)"
            )
    return out
