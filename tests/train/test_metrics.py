"""The fast exact-match and argmax kernels of memdyn.train.metrics against NumPy's argmax, ties included."""

import jax
import numpy as np
import pytest

from memdyn.train import metrics


@pytest.mark.parametrize("levels", [3, 1000])  # 3 levels: most rows tie at the maximum; 1000: few do
def test_exact_match_and_first_argmax_equal_numpy_argmax_with_ties(levels):
    rng = np.random.default_rng(levels)
    logits_BxLxV = rng.integers(0, levels, size=(4, 64, 97)).astype(np.float32)
    argmax_BxL = logits_BxLxV.argmax(-1)  # NumPy: the first index of the maximum, like jnp.argmax
    # Targets: the argmax itself, a later or an earlier index holding the same maximum, or anything.
    is_max_BxLxV = logits_BxLxV == logits_BxLxV.max(-1, keepdims=True)
    last_max_BxL = 96 - is_max_BxLxV[..., ::-1].argmax(-1)
    targets_BxL = np.select(
        [rng.random((4, 64)) < 0.3, rng.random((4, 64)) < 0.5],
        [argmax_BxL, last_max_BxL],
        rng.integers(0, 97, size=(4, 64)),
    )
    if levels == 3:
        assert (last_max_BxL != argmax_BxL).mean() > 0.5 and (targets_BxL == last_max_BxL).any()
    got = jax.jit(metrics.argmax_is_target)(logits_BxLxV, targets_BxL)
    np.testing.assert_array_equal(np.asarray(got), argmax_BxL == targets_BxL)
    np.testing.assert_array_equal(np.asarray(jax.jit(metrics.first_argmax)(logits_BxLxV)), argmax_BxL)
    assert 0 < (argmax_BxL == targets_BxL).mean() < 1
