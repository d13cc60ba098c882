"""Inputs, targets and loss weights for the two objectives (causal LM, masked LM).

Causal: the model reads tokens[:, :-1] and predicts tokens[:, 1:]; every real target is trained and scored.
Masked (BERT/RoBERTa): 15% of the real tokens are selected; of those 80% become <mask>, 10% a random token, 10%
stay. The loss counts every selected position. Memorization is scored (``scored`` = "mask", the default, as
Tirumala et al.'s context set for a masked LM is the masked token) at the ``<mask>`` positions only, or
(``scored`` = "selected") at every selected position, including the 10% the model sees unchanged. Padding never
counts.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

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
    scored: str = "mask"  # mask | selected: the positions memorization is scored at


SCORED = ("mask", "selected")


class Targets(NamedTuple):
    inputs_BxL: jax.Array
    targets_BxL: jax.Array
    loss_weights_BxL: jax.Array  # float32 1/0: positions the loss counts
    score_weights_BxL: jax.Array  # float32 1/0: positions exact memorization counts


def causal_lm(tokens_BxL: jax.Array, pad_id: int) -> Targets:
    """Shapes B x L' with L' = L - 1; loss and score count the same (real) targets."""
    inputs, targets = tokens_BxL[:, :-1], tokens_BxL[:, 1:]
    weights = (targets != pad_id).astype(jnp.float32)
    return Targets(inputs, targets, weights, weights)


def masked_lm(tokens_BxL: jax.Array, rng: jax.Array, vocab_size: int, cfg: MaskingConfig) -> Targets:
    """BERT masking with the 80/10/10 replacement rule; shapes B x L."""
    select_rng, kind_rng, random_rng = jax.random.split(rng, 3)
    real = tokens_BxL != cfg.pad_id
    selected = real & (jax.random.uniform(select_rng, tokens_BxL.shape) < cfg.mask_prob)
    kind = jax.random.uniform(kind_rng, tokens_BxL.shape)
    to_mask = selected & (kind < cfg.replace_mask)
    to_random = selected & (kind >= cfg.replace_mask) & (kind < cfg.replace_mask + cfg.replace_random)
    random_tokens = jax.random.randint(random_rng, tokens_BxL.shape, cfg.num_special, vocab_size, tokens_BxL.dtype)
    inputs = jnp.where(to_mask, cfg.mask_id, jnp.where(to_random, random_tokens, tokens_BxL))
    scored = to_mask if cfg.scored == "mask" else selected
    return Targets(inputs, tokens_BxL, selected.astype(jnp.float32), scored.astype(jnp.float32))
