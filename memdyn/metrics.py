"""Memorization metrics computed from logits that already exist (no second forward pass).

Exact memorization (Tirumala et al. 2022): a target position is memorized when argmax f(s) equals the true next
token (or the masked token). ``mem_update`` is M on the batch of this update; ``exact_match_B`` is the same
fraction per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_metrics(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array) -> dict[str, jax.Array]:
    """Loss and exact-match statistics; all positions with weight 0 (padding, unmasked MLM tokens) are ignored.

    Returns scalars ``loss`` (mean cross-entropy per counted token), ``mem_update``, ``num_tokens`` and per-example
    vectors ``loss_B``, ``exact_match_B`` (fraction of counted positions whose argmax is the target, NaN-free: 0
    for an example with no counted position) and ``num_tokens_B``.
    """
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
    num_tokens_B = weights_BxL.sum(axis=1)
    num_tokens = num_tokens_B.sum()
    safe_B = jnp.maximum(num_tokens_B, 1.0)
    return {
        "loss": (ce_BxL * weights_BxL).sum() / jnp.maximum(num_tokens, 1.0),
        "mem_update": (correct_BxL * weights_BxL).sum() / jnp.maximum(num_tokens, 1.0),
        "num_tokens": num_tokens,
        "loss_B": (ce_BxL * weights_BxL).sum(axis=1) / safe_B,
        "exact_match_B": (correct_BxL * weights_BxL).sum(axis=1) / safe_B,
        "num_tokens_B": num_tokens_B,
    }


def mean_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
    """Mean cross-entropy per counted token, with no memorization statistics."""
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    return (ce_BxL * weights_BxL).sum() / jnp.maximum(weights_BxL.sum(), 1.0)
