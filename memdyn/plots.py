"""Figures of a run (matplotlib, written as PNG without a display)."""

from __future__ import annotations

import pandas as pd

from memdyn import runs


def plot_training(train_csv: str, png_path: str, window: int = 5) -> None:
    """Loss and M_update (rolling mean over ``window`` updates, as Tirumala et al.) against epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.read_csv(train_csv)
    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax_loss.plot(frame["epochs_done"], frame["loss"], lw=1)
    ax_loss.set(xlabel="epochs", ylabel="train loss", yscale="log")
    ax_mem.plot(frame["epochs_done"], frame["mem_update"].rolling(window, min_periods=1).mean(), lw=1)
    ax_mem.set(xlabel="epochs", ylabel=f"M_update (rolling {window})", ylim=(0, 1))
    first = frame.iloc[0]
    fig.suptitle(f"{first['size']} ({int(first['params']):,} params), seed {first['seed']}, lr {first['peak_lr']}")
    runs.atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
