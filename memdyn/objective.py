"""Inputs, targets and loss weights for the two objectives (causal LM, masked LM).

Causal: the model reads tokens[:, :-1] and predicts tokens[:, 1:]. Masked (BERT/RoBERTa): 15% of the real tokens
are selected; of those 80% become <mask>, 10% a random token, 10% stay; loss and metrics count the selected
positions only. Padding never counts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from memdyn.data import vocab


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    pad_id: int = vocab.PAD_ID
    mask_id: int = vocab.MASK_ID
    num_special: int = vocab.NUM_SPECIAL  # ids below this are never drawn as random replacements
    mask_prob: float = 0.15
    replace_mask: float = 0.8
    replace_random: float = 0.1


def causal_lm(tokens_BxL: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(inputs_BxL', targets_BxL', weights_BxL') with L' = L - 1."""
    inputs, targets = tokens_BxL[:, :-1], tokens_BxL[:, 1:]
    return inputs, targets, (targets != pad_id).astype(jnp.float32)


def masked_lm(tokens_BxL: jax.Array, rng: jax.Array, vocab_size: int,
              cfg: MaskingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(inputs_BxL, targets_BxL, weights_BxL): BERT masking with the 80/10/10 replacement rule."""
    select_rng, kind_rng, random_rng = jax.random.split(rng, 3)
    real = tokens_BxL != cfg.pad_id
    selected = real & (jax.random.uniform(select_rng, tokens_BxL.shape) < cfg.mask_prob)
    kind = jax.random.uniform(kind_rng, tokens_BxL.shape)
    to_mask = selected & (kind < cfg.replace_mask)
    to_random = selected & (kind >= cfg.replace_mask) & (kind < cfg.replace_mask + cfg.replace_random)
    random_tokens = jax.random.randint(random_rng, tokens_BxL.shape, cfg.num_special, vocab_size, tokens_BxL.dtype)
    inputs = jnp.where(to_mask, cfg.mask_id, jnp.where(to_random, random_tokens, tokens_BxL))
    return inputs, tokens_BxL, selected.astype(jnp.float32)
