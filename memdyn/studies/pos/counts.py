"""Parts of speech (Tirumala et al. 2022): how well each part of speech is predicted and memorized.

For the scored positions whose target token carries tag p (the store's per-token tags, ``tags_BxL``):
  positions(p)  how many there are
  right(p)      how many have a predicted token (the argmax) whose part of speech is p
  exact(p)      how many are exactly memorized (the argmax is the target token)
R(p) = right(p) / positions(p) and R_mem(p) = exact(p) / positions(p). The part of speech of a predicted token is
the tag that token id carries most often in the training store (``token_tags``): for the embedded corpus every
word has one part of speech; for spaCy-tagged text this is each token's majority tag.

The counts are accumulated on the device inside the jitted step (one-hot sums over [B, L, tags]), so nothing
per token leaves the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

COUNTS = ("positions", "right", "exact")


def token_tags(tokens_NxL: np.ndarray, tags_NxL: np.ndarray, vocab_size: int, num_tags: int) -> np.ndarray:
    """The tag each token id carries most often [V] (int32; 0, the "no tag" id, for ids never seen).

    The (memory-mapped) store is read in blocks of rows, so memory stays bounded however large it is.
    """
    counts = np.zeros(vocab_size * num_tags, np.int64)
    for start in range(0, len(tokens_NxL), 1 << 16):
        tokens = np.asarray(tokens_NxL[start : start + (1 << 16)], np.int64).ravel()
        tags = np.asarray(tags_NxL[start : start + (1 << 16)], np.int64).ravel()
        if tags.size and (tags.min() < 0 or tags.max() >= num_tags):
            raise ValueError(f"tags outside 0..{num_tags - 1} (the store's manifest names {num_tags} tags)")
        counts += np.bincount(tokens * num_tags + tags, minlength=vocab_size * num_tags)
    counts_VxT = counts.reshape(vocab_size, num_tags)
    return np.where(counts_VxT.sum(1) > 0, counts_VxT.argmax(1), 0).astype(np.int32)


def tag_counts(
    predicted_BxL: jax.Array,
    targets_BxL: jax.Array,
    target_tags_BxL: jax.Array,
    weights_BxL: jax.Array,
    token_tags_V: jax.Array,
    num_tags: int,
) -> dict[str, jax.Array]:
    """``pos_positions_T``, ``pos_right_T`` and ``pos_exact_T`` (float32 [tags]) over the weighted positions, from
    the predicted (argmax) tokens (``metrics.first_argmax``)."""
    onehot_BxLxT = jax.nn.one_hot(target_tags_BxL.astype(jnp.int32), num_tags, dtype=jnp.float32)
    onehot_BxLxT = onehot_BxLxT * weights_BxL[..., None]
    right_BxL = (token_tags_V[predicted_BxL] == target_tags_BxL).astype(jnp.float32)
    exact_BxL = (predicted_BxL == targets_BxL).astype(jnp.float32)
    return {
        "pos_positions_T": onehot_BxLxT.sum((0, 1)),
        "pos_right_T": (onehot_BxLxT * right_BxL[..., None]).sum((0, 1)),
        "pos_exact_T": (onehot_BxLxT * exact_BxL[..., None]).sum((0, 1)),
    }


def rows(tag_names: list[str], counts: dict[str, np.ndarray]) -> list[dict]:
    """One pos.csv row per tag with positions: positions, right, exact, R, R_mem."""
    out = []
    for t, name in enumerate(tag_names):
        n = float(counts["pos_positions_T"][t])
        if n == 0:
            continue
        right, exact = float(counts["pos_right_T"][t]), float(counts["pos_exact_T"][t])
        out.append(
            {
                "tag": name,
                "positions": int(n),
                "right": int(right),
                "exact": int(exact),
                "R": right / n,
                "R_mem": exact / n,
            }
        )
    return out
