"""`memdyn analyze learning_rate` on hand-made runs (no JAX): the grid's means over seeds, the best rate per size,
the U-shape and spread rules, and the rate chosen per size, each worked out by hand below."""

import math
import os

import pandas as pd
import pytest
from hand_made_runs import write_run

from memdyn.studies.learning_rate import analysis as learning_rate

# Whole-training-set M after epochs 0..3, per (size, rate): two seeds each.
CURVES = {
    ("nano", 1e-3): ([0, 0.3, 0.5, 0.6], [0, 0.4, 0.55, 0.6]),  # T(0.5) = 2, 2; final 0.6
    ("nano", 3e-3): ([0, 0.5, 0.7, 0.9], [0, 0.6, 0.8, 0.9]),  # T(0.5) = 1, 1; final 0.9  <- best, interior
    ("nano", 1e-2): ([0, 0.1, 0.2, 0.3], [0, 0.5, 0.6, 0.9]),  # one seed never reaches 0.5; final 0.6
    ("micro", 1e-3): ([0, 0.5, 0.6, 0.7], [0, 0.5, 0.6, 0.7]),  # T(0.5) = 1, 1      <- best, at the grid's edge
    ("micro", 3e-3): ([0, 0.4, 0.5, 0.95], [0, 0.4, 0.5, 0.95]),  # T(0.5) = 2, 2; final 0.95 <- chosen
    ("micro", 1e-2): ([0, 0.1, 0.2, 0.5], [0, 0.1, 0.2, 0.5]),  # T(0.5) = 3, 3
}
PARAMS = {"nano": 1000, "micro": 2000}


@pytest.fixture
def grid_runs(tmp_path):
    workdirs = []
    for (size, lr), seeds in CURVES.items():
        for seed, train_m in enumerate(seeds):
            workdirs.append(
                write_run(
                    tmp_path / f"{size}-{lr}-{seed}",
                    train_m=train_m,
                    size=size,
                    params=PARAMS[size],
                    peak_lr=lr,
                    seed=seed,
                )
            )
    return workdirs


def test_grid_best_rate_u_shape_spread_and_choice(grid_runs, tmp_path):
    out = str(tmp_path / "out")
    result = learning_rate.analyze_runs(grid_runs, out, taus=(0.5,))
    grid = result["grid"].set_index(["size", "peak_lr"])
    assert grid.loc[("nano", 1e-3), "T_epochs_0.5_mean"] == 2.0
    assert grid.loc[("nano", 3e-3), "final_m_mean"] == pytest.approx(0.9)
    assert math.isnan(grid.loc[("nano", 1e-2), "T_epochs_0.5_mean"])  # one seed never got there
    assert grid.loc[("nano", 1e-2), "T_epochs_0.5_n"] == 1
    assert grid.loc[("nano", 1e-2), "final_m_mean"] == pytest.approx(0.6)

    shape = result["shape"].set_index("size")
    nano, micro = shape.loc["nano"], shape.loc["micro"]
    assert (nano["best_lr"], nano["best_T"], nano["rates_reached"]) == (3e-3, 1.0, 2)
    assert nano["interior"] and nano["u_shape"]  # 1e-3 slower (interval [2, 2]), 1e-2 not reached by all
    assert nano["spread"] == pytest.approx(math.log2(2 / 1))
    assert (micro["best_lr"], micro["rates_reached"]) == (1e-3, 3)
    assert not micro["interior"] and not micro["u_shape"]
    assert micro["spread"] == pytest.approx(math.log2(3 / 1))

    chosen = result["chosen"].set_index("size")  # the highest mean final M per size
    assert chosen.loc["nano", "peak_lr"] == 3e-3 and chosen.loc["micro", "peak_lr"] == 3e-3
    assert chosen.loc["micro", "final_m_mean"] == pytest.approx(0.95)
    assert chosen.loc["micro", "T_epochs_0.5_mean"] == 2.0
    for name in ("runs", "grid", "shape", "chosen"):
        assert len(pd.read_csv(os.path.join(out, f"learning_rate_{name}.csv")))
    for png in ("learning_rate.png", "learning_rate_chosen_epochs.png", "learning_rate_chosen_t_tau.png"):
        assert os.path.getsize(os.path.join(out, png)) > 10_000
    assert "reached by 1/2" in open(os.path.join(out, "learning_rate_grid.md")).read()


def test_a_u_needs_slower_neighbours(grid_runs, tmp_path):
    """Make the lower neighbour as fast as the best rate in one seed: its interval then holds the best mean."""
    faster = write_run(
        tmp_path / "nano-0.001-1", train_m=[0, 0.5, 0.6, 0.6], size="nano", params=1000, peak_lr=1e-3, seed=1
    )
    workdirs = [w for w in grid_runs if not w.endswith("nano-0.001-1")] + [faster]
    shape = learning_rate.analyze_runs(workdirs, str(tmp_path / "out"), taus=(0.5,))["shape"].set_index("size")
    assert shape.loc["nano", "best_lr"] == 3e-3 and shape.loc["nano", "interior"]
    assert not shape.loc["nano", "u_shape"]  # 1e-3: T = 2, 1 -> mean 1.5, interval reaches below 1


def test_a_rate_a_size_did_not_run_makes_no_u(grid_runs, tmp_path):
    """A larger size swept at two of the grid's three rates: fastest at the middle one, whose lower neighbour
    it never ran, so it is inside the grid but no U can be read."""
    medium = [
        write_run(tmp_path / f"medium-{lr}-{seed}", train_m=m, size="medium", params=4000, peak_lr=lr, seed=seed)
        for lr, m in ((3e-3, [0, 0.5, 0.9, 0.9]), (1e-2, [0, 0.2, 0.5, 0.6]))
        for seed in (0, 1)
    ]
    shape = learning_rate.analyze_runs(grid_runs + medium + medium, str(tmp_path / "out"), taus=(0.5,))[
        "shape"
    ].set_index("size")
    row = shape.loc["medium"]
    assert (row["best_lr"], row["rates"], row["interior"], row["u_shape"]) == (3e-3, 2, True, False)


def test_mixed_objectives_are_refused(grid_runs, tmp_path):
    masked = write_run(tmp_path / "masked", train_m=[0, 0.5, 0.6, 0.7], causal=False)
    with pytest.raises(ValueError, match="mix causal and masked"):
        learning_rate.analyze_runs(grid_runs + [masked], str(tmp_path / "out"))
