"""Figures of a run (matplotlib, written as PNG without a display)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs


def plot_training(train_csv: str, png_path: str, window: int = 5, eval_csv: str | None = None) -> list[str]:
    """Train loss and M_update (rolling mean over ``window`` updates, as Tirumala et al.) against epochs, with
    the loss and M(f) of every evaluated set (eval.csv; MemSinks modes and insertion evaluations left out) on the
    same axes. Returns the labels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.read_csv(train_csv)
    steps_per_epoch = float(((frame["step"] + 1) / frame["epochs_done"]).iloc[-1])
    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax_loss.plot(frame["epochs_done"], frame["loss"], lw=1, color="C0", label="train (per update)")
    ax_mem.plot(
        frame["epochs_done"],
        frame["mem_update"].rolling(window, min_periods=1).mean(),
        lw=1,
        color="C0",
        label=f"M_update (rolling {window})",
    )
    highest = frame["mem_update"].max()
    evals = _plain_evaluations(eval_csv)
    for i, (name, rows) in enumerate(evals.groupby("set", sort=False), start=1):
        epochs = rows["step"] / steps_per_epoch
        ax_loss.plot(epochs, rows["loss"], marker="o", ms=3, lw=1, color=f"C{i % 10}", label=name)
        ax_mem.plot(epochs, rows["exact_match"], marker="o", ms=3, lw=1, color=f"C{i % 10}", label=f"M(f) {name}")
        highest = max(highest, rows["exact_match"].max())
    ax_loss.set(xlabel="epochs", ylabel="loss (nats/token)")
    top = min(1.0, 1.1 * highest) if np.isfinite(highest) and highest > 0 else 1.0
    ax_mem.set(xlabel="epochs", ylabel="exact memorization", ylim=(0, top))
    for ax in (ax_loss, ax_mem):
        ax.legend(fontsize=7)
    first = frame.iloc[0]
    fig.suptitle(f"{first['size']} ({int(first['params']):,} params), seed {first['seed']}, lr {first['peak_lr']}")
    runs.atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    labels = [line.get_label() for ax in (ax_loss, ax_mem) for line in ax.get_lines()]
    plt.close(fig)
    return labels


def _plain_evaluations(eval_csv: str | None) -> pd.DataFrame:
    """Scheduled evaluations of eval.csv: no MemSinks mode rows (``<set>@<mode>``), none labelled by an insertion."""
    if not eval_csv or not os.path.isfile(eval_csv) or not os.path.getsize(eval_csv):
        return pd.DataFrame(columns=["set", "step", "loss", "exact_match"])
    evals = pd.read_csv(eval_csv)
    plain = ~evals["set"].astype(str).str.contains("@")
    if "at_insertion" in evals:
        plain &= evals["at_insertion"].isna() | (evals["at_insertion"].astype(str) == "")
    return evals[plain]
