"""``predict_tables.md`` and ``predict.png`` of ``memdyn analyze predict`` from its tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memdyn.studies import stats, tables
from memdyn.studies.predict.extracts import FAMILIES


def _ci(row, column: str, digits: int = 3) -> str:
    return stats.format_ci(row[f"{column}_mean"], row[f"{column}_ci_low"], row[f"{column}_ci_high"], digits)


def _undefined(value: float) -> str:
    """A precision of a predictor that memorizes nothing is undefined, not zero."""
    return "undefined" if not np.isfinite(value) else f"{value:.3f}"


def markdown(result: dict[str, pd.DataFrame]) -> str:
    """The paper's two tables, the equi-compute view, memorized fractions and the duplicate breakdown."""
    predictors = result["predictors"]
    out = []
    for family, title, extra in (
        ("smaller, final", "Smaller models, fully trained, predicting the target", "params"),
        ("target checkpoint", "Intermediate checkpoints of the target predicting its final set", "step"),
        ("smaller, intermediate", "Intermediate checkpoints of smaller models", "step"),
    ):
        part = predictors[predictors["family"] == family]
        if part.empty:
            continue
        table = pd.DataFrame(
            {
                "predictor": part["size"] + "@" + part["step"].astype(int).astype(str),
                extra: part[extra].astype(int),
                "fraction of target compute": part["compute_fraction_mean"].map(lambda v: f"{v:.3g}"),
                "memorized (mean)": part["n_predicted_mean"].map(lambda v: f"{v:.1f}"),
                "precision": [_ci(r, "precision") or "undefined" for _, r in part.iterrows()],
                "recall": [_ci(r, "recall") for _, r in part.iterrows()],
                "seeds": part["n_seeds"],
            }
        )
        out += [f"### {title}", "", tables.to_markdown(table), ""]
    eq = result["equicompute"]
    if not eq.empty:
        show = pd.DataFrame({"compute fraction ≤": eq["compute_fraction"].map(lambda v: f"{v:.3g}")})
        for family in FAMILIES:
            key = family.replace(", ", "_").replace(" ", "_")
            if key in eq:
                show[f"best {family} (recall, precision)"] = [
                    ""
                    if not isinstance(r[key], str)
                    else f"{r[key]} ({r[key + '_recall']:.3f}, {_undefined(r[key + '_precision'])})"
                    for _, r in eq.iterrows()
                ]
        out += [
            "### Equal compute: the best predictor of each family using at most that compute",
            "",
            tables.to_markdown(show),
            "",
        ]
    memorized = result["memorized"]
    table = pd.DataFrame(
        {
            "size": memorized["size"],
            "step": memorized["step"].astype(int),
            "memorized fraction": [_ci(r, "memorized_fraction", 4) for _, r in memorized.iterrows()],
            "mean score": [_ci(r, "mean_score") for _, r in memorized.iterrows()],
            "seeds": memorized["n_seeds"],
        }
    )
    out += ["### Memorized fraction of the training sequences", "", tables.to_markdown(table), ""]
    duplicates = result["duplicates"]
    if not duplicates.empty:
        table = pd.DataFrame(
            {
                "size": duplicates["size"],
                "occurrences": duplicates["occurrences"],
                "sequences": duplicates["n_sequences_mean"].map(lambda v: f"{v:.0f}"),
                "memorized fraction": [_ci(r, "memorized_fraction") for _, r in duplicates.iterrows()],
            }
        )
        out += [
            "### Memorized fraction by occurrences in the training data (last checkpoint)",
            "",
            tables.to_markdown(table),
            "",
        ]
    return "\n".join(out).rstrip()


def plot(result: dict[str, pd.DataFrame], png_path: str) -> None:
    """Precision and recall against compute, memorized fractions, scores and duplicates: four panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    predictors = result["predictors"]
    ax = axes[0, 0]
    markers = {"target checkpoint": "o", "smaller, final": "s", "smaller, intermediate": "."}
    for metric, colour in (("precision", "C0"), ("recall", "C3")):
        for family, marker in markers.items():
            part = predictors[predictors["family"] == family]
            if part.empty:
                continue
            yerr = [
                (part[f"{metric}_mean"] - part[f"{metric}_ci_low"]).clip(lower=0).fillna(0),
                (part[f"{metric}_ci_high"] - part[f"{metric}_mean"]).clip(lower=0).fillna(0),
            ]
            ax.errorbar(
                part["compute_fraction_mean"],
                part[f"{metric}_mean"],
                yerr=yerr,
                ls="none",
                marker=marker,
                ms=5 if marker != "." else 7,
                color=colour,
                capsize=2,
                alpha=0.85,
                label=f"{metric}: {family}",
            )
    ax.set_xscale("log")
    ax.set(
        xlabel="predictor compute / target compute",
        ylabel="precision, recall",
        ylim=(-0.02, 1.02),
        title="predicting the target's memorized set (95% bootstrap CI)",
    )
    ax.legend(fontsize=7)

    memorized = result["memorized"]
    ax = axes[0, 1]
    for i, (size, part) in enumerate(memorized.groupby("size", sort=False)):
        ax.plot(part["step"], part["memorized_fraction_mean"], marker="o", ms=3, color=f"C{i}", label=size)
        ax.fill_between(
            part["step"],
            part["memorized_fraction_ci_low"],
            part["memorized_fraction_ci_high"],
            color=f"C{i}",
            alpha=0.2,
        )
    ax.set(
        xlabel="training step",
        ylabel="memorized fraction (score = 1)",
        title="memorized training sequences (mean, 95% t CI over seeds)",
    )
    ax.legend(fontsize=7)

    scores = result["scores"]
    ax = axes[1, 0]
    for i, (size, part) in enumerate(scores.groupby("size", sort=False)):
        seen = part[part["fraction_mean"] > 0]  # a log axis: score values no sequence has are left out
        ax.plot(seen["score"], seen["fraction_mean"], marker="o", ms=3, lw=1, color=f"C{i}", label=size)
    ax.set_yscale("log")
    ax.set(
        xlabel="score (fraction of the continuation reproduced)",
        ylabel="fraction of sequences",
        title="score distribution at the last checkpoint (mean over seeds)",
    )
    if not scores.empty:
        ax.legend(fontsize=7)

    duplicates = result["duplicates"]
    ax = axes[1, 1]
    if not duplicates.empty:
        occurrences = sorted(duplicates["occurrences"].unique())
        sizes = list(dict.fromkeys(duplicates["size"]))
        width = 0.8 / max(len(sizes), 1)
        for i, size in enumerate(sizes):
            part = duplicates[duplicates["size"] == size].set_index("occurrences").reindex(occurrences)
            x = np.arange(len(occurrences)) + i * width
            yerr = [
                (part["memorized_fraction_mean"] - part["memorized_fraction_ci_low"]).clip(lower=0).fillna(0),
                (part["memorized_fraction_ci_high"] - part["memorized_fraction_mean"]).clip(lower=0).fillna(0),
            ]
            ax.bar(x, part["memorized_fraction_mean"], width, yerr=yerr, capsize=2, color=f"C{i}", label=size)
        ax.set_xticks(np.arange(len(occurrences)) + 0.4 - width / 2, [str(o) for o in occurrences])
        ax.legend(fontsize=7)
    ax.set(
        xlabel="occurrences of the sequence in the training data",
        ylabel="memorized fraction",
        title="memorized by duplication (last checkpoint, 95% t CI)",
    )
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
