"""The figures of ``memdyn analyze memorization`` (also drawn by ``learning_rate``): M_e against epochs and
T(N, tau) against parameters, with 95% intervals over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memdyn.studies.memorization.measures import tau_label


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def size_colours(summary: pd.DataFrame, plt) -> dict:
    """Colour per model size, ordered by parameter count."""
    order = summary.sort_values("params", kind="stable") if summary["params"].notna().any() else summary
    sizes = list(dict.fromkeys(order["size"]))
    cmap = plt.get_cmap("viridis")
    return {s: cmap(i / max(len(sizes) - 1, 1) * 0.9) for i, s in enumerate(sizes)}


LINESTYLES = ("-", "--", ":", "-.")  # one per objective / learning-rate variant


def plot_epochs(epochs: pd.DataFrame, summary: pd.DataFrame, png_path: str) -> None:
    """M_e of complete epochs against epochs completed: per size the mean over seeds, its 95% t band, and each
    seed as a thin line."""
    from memdyn.studies.stats import t_interval

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    if len(summary):
        colours = size_colours(summary, plt)
        done = epochs[epochs["complete"].astype(bool)]
        # A size run at several rates (or objectives) gets one curve per rate, not one over all its runs.
        split = [c for c in ("peak_lr", "causal") if c in done and (done.groupby("size")[c].nunique() > 1).any()]
        for size, colour in colours.items():
            for v, (key, part) in enumerate(done[done["size"] == size].groupby(split or (lambda _: 0))):
                for _, run in part.groupby("workdir" if "workdir" in part else "run"):
                    ax.plot(
                        run["epoch"],
                        run["exact_match"],
                        color=colour,
                        lw=0.5,
                        alpha=0.35,
                        ls=LINESTYLES[v % len(LINESTYLES)],
                    )
                stats = [(e, *t_interval(g["exact_match"])) for e, g in part.groupby("epoch")]
                e, mean, low, high, n = (np.array(v) for v in zip(*stats))
                seeds = int(n.max())
                key = key if isinstance(key, tuple) else (key,)
                variant = "".join(f", {c}={k:g}" if c == "peak_lr" else f", {c}={k}" for c, k in zip(split, key))
                ax.plot(
                    e,
                    mean,
                    color=colour,
                    lw=1.6,
                    ls=LINESTYLES[v % len(LINESTYLES)],
                    label=f"{size}{variant} ({seeds} seed{'s' * (seeds > 1)})",
                )
                ax.fill_between(e, low, high, color=colour, alpha=0.25, lw=0)
        ax.legend(fontsize=7, title="size", title_fontsize=7)
    source = ", ".join(sorted(set(summary["m_from"]))) if len(summary) else ""
    ax.set(
        xlabel="epochs completed",
        ylabel="exact memorization $M_e$ of the training set",
        ylim=(0, 1),
        title=f"M(f) after each epoch (mean, 95% CI over seeds; {source})",
    )
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)


def plot_t_tau(table: pd.DataFrame, taus, png_path: str, split_by=("causal", "peak_lr")) -> None:
    """T(N, tau) in epochs against params (log x): per tau the mean over seeds with its 95% t interval, drawn
    only where every seed reached tau."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    # Runs differing in objective or learning rate are separate lines, not seeds of one point (``split_by``; the
    # learning-rate analysis draws one line through the sizes at their chosen rates).
    variants = [c for c in split_by if len(table) and table[c].nunique() > 1]
    groups = table.groupby(variants, dropna=False) if variants else [((), table)]
    plotted = False
    for g, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        suffix = ", ".join(f"{c}={v}" for c, v in zip(variants, key))
        for i, tau in enumerate(taus):
            c = f"T_epochs_{tau_label(tau)}"
            points = part.dropna(subset=[f"{c}_mean"]).sort_values("params")
            if points.empty:
                continue
            low = (points[f"{c}_mean"] - points[f"{c}_ci_low"]).fillna(0)
            high = (points[f"{c}_ci_high"] - points[f"{c}_mean"]).fillna(0)
            label = f"τ={tau_label(tau)}" + (f" ({suffix})" if suffix else "")
            ax.errorbar(
                points["params"],
                points[f"{c}_mean"],
                yerr=[low, high],
                color=f"C{i % 10}",
                ls=LINESTYLES[g % len(LINESTYLES)],
                marker="o",
                ms=4,
                capsize=3,
                label=label,
            )
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no size reached any τ in every seed", transform=ax.transAxes, ha="center", va="center")
    ax.set_xscale("log")
    ax.set(
        xlabel="parameters N",
        ylabel="T(N, τ) [epochs]",
        title="epochs until M ≥ τ (mean, 95% CI over seeds;\nsizes where a seed never got there are left out)",
    )
    if plotted:
        ax.legend(fontsize=7)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
