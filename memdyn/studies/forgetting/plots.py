"""The figure of ``memdyn analyze forgetting``: insertion − sham against steps since the last insertion, and the
retained trace per condition against parameters, with 95% intervals over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memdyn.studies.forgetting.measures import CONDITION


def condition_label(row) -> str:
    label = f"{row['size']} @ step {int(row['insert_step'])}"
    if row["repeats"] > 1:
        label += f", {int(row['repeats'])}× in a row"
    if row["times"] > 1:
        label += f", {int(row['times'])}× every {int(row['every'])} steps"
    return label


def plot(curves: pd.DataFrame, summary: pd.DataFrame, table: pd.DataFrame, set_name: str, png_path: str) -> None:
    """Left: insert − sham against steps since the last insertion, mean over seeds and 95% band per condition
    (the raw M of each run when no run has a control). Right: the retained trace per condition with its 95% CI,
    against parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memdyn.studies.stats import t_interval

    paired = "difference" in curves.columns and not table.empty
    fig, axes = plt.subplots(
        1, 2 if paired else 1, figsize=(13 if paired else 6.5, 4.4), constrained_layout=True, squeeze=False
    )
    ax = axes[0][0]
    if paired:
        inserted = summary[~summary["sham"].astype(bool) & summary["control_run"].notna()]
        for i, (_, row) in enumerate(table.iterrows()):
            same = np.logical_and.reduce([inserted[c] == row[c] for c in CONDITION])
            part = curves[curves["workdir"].isin(inserted.loc[same, "workdir"]) & curves["difference"].notna()]
            points = [(t, *t_interval(g["difference"])) for t, g in part.groupby("steps_since_insert")]
            if not points:
                continue
            t, mean, low, high, _ = (np.array(v) for v in zip(*points))
            colour = f"C{i % 10}"
            seeds = int(row["n_seeds"])
            ax.plot(t, mean, color=colour, lw=1.2, label=f"{condition_label(row)} ({seeds} seed{'s' * (seeds > 1)})")
            ax.fill_between(t, low, high, color=colour, alpha=0.2, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(ylabel=f"M({set_name}): insertion − sham control")
    else:
        for i, (_, part) in enumerate(curves.groupby("workdir", sort=False)):
            ax.plot(
                part["steps_since_insert"], part["exact_match"], color=f"C{i % 10}", lw=1.0, label=part["run"].iloc[0]
            )
        ax.set(ylabel=f"M ({set_name})")
    ax.axvline(0, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="steps since the last insertion")
    ax.legend(fontsize=7)
    if paired:
        ax = axes[0][1]
        for kind, (marker, select) in {
            "one insertion": ("o", (table["repeats"] == 1) & (table["times"] == 1)),
            "repeated / spaced": ("s", (table["repeats"] > 1) | (table["times"] > 1)),
        }.items():
            part = table[select].copy()
            if part.empty:
                continue
            if kind != "one insertion":  # beside the single insertion of the same size, not on top of it
                part["params"] = part["params"] * 1.06 ** (1 + np.arange(len(part)))
            err = [
                (part["retained_mean"] - part["retained_ci_low"]).fillna(0),
                (part["retained_ci_high"] - part["retained_mean"]).fillna(0),
            ]
            ax.errorbar(
                part["params"], part["retained_mean"], yerr=err, marker=marker, ls="none", capsize=3, label=kind
            )
            for j, (_, row) in enumerate(part.iterrows()):  # labels of one size stacked, not overprinted
                ax.annotate(
                    condition_label(row),
                    (row["params"], row["retained_mean"]),
                    fontsize=6,
                    xytext=(5, 2 - 9 * j),
                    textcoords="offset points",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="parameters N", ylabel="retained: late mean of insertion − sham")
        ax.legend(fontsize=7)
    fig.suptitle(f"forgetting of the {set_name!r} set (mean and 95% CI over seeds)")
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
