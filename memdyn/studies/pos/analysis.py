"""``memdyn analyze pos``: how fast each part of speech is learned and memorized (Tirumala et al. 2022), from the
runs' pos.csv (``memdyn.studies.pos.counts``).

Per run, tag and evaluation of the training set (``set`` = ``train``, the whole training set after each epoch;
a run without those evaluations uses the per-update rows, ``set`` = ``update``, summed over each epoch's logged
steps: every step with ``log_every`` = 1, a subsample otherwise):
R(p) = right(p) / positions(p) and R_mem(p) = exact(p) / positions(p), against epochs. Tags with no position and
the ``NONE`` tag (ends of documents, special tokens) are left out. Over seeds: the mean and 95% t interval per
(size, tag, epoch), and at the last epoch the tags ranked by R_mem.
"""

from __future__ import annotations

import os

import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register, stats, tables, write_csvs

LEFT_OUT_TAGS = ("NONE",)


@register(
    "pos",
    help="R(p) and R_mem(p) per part of speech over training (epochs), 95% CIs over seeds",
    outputs="pos_curves.csv, pos_by_size.csv, pos_final.csv/.md, pos.png",
)
def run(options: Options) -> pd.DataFrame:
    final = analyze_runs(options.workdirs, options.out_dir)["final"]
    return final[["size", "tag", "n_seeds", "R_mean", "R_mem_mean"]]


def load_curves(workdirs: list[str]) -> pd.DataFrame:
    """One row per (run, tag, epoch): positions, right, exact, R, R_mem and the run's identity."""
    frames = []
    for workdir in workdirs:
        path = os.path.join(workdir, "pos.csv")
        if not os.path.isfile(path):
            continue
        config = runs.read_config(workdir)
        frame = read_csv(path)
        train = read_csv(os.path.join(workdir, "train.csv"))
        steps_per_epoch = float(((train["step"] + 1) / train["epochs_done"]).iloc[-1])
        if (frame["set"] == "train").any():
            part = frame[frame["set"] == "train"].copy()
            part["epoch"] = (part["step"] / steps_per_epoch).round().astype(int)  # evaluated after whole epochs
            part["source"] = "train_eval"
        else:  # the updates' own batches, summed per epoch (epoch e: the model during epoch e)
            part = frame[frame["set"] == "update"].copy()
            part["epoch"] = (part["step"] // steps_per_epoch).astype(int) + 1
            part = part.groupby(["epoch", "tag"], as_index=False)[["positions", "right", "exact"]].sum()
            part["source"] = "in_step"
        part = part[~part["tag"].isin(LEFT_OUT_TAGS) & (part["positions"] > 0)]
        part["R"] = part["right"] / part["positions"]
        part["R_mem"] = part["exact"] / part["positions"]
        identity = runs.identity(config, workdir)
        frames.append(
            part.assign(**identity)[
                ["run", "size", "params", "seed", "source", "epoch", "tag", "positions", "right", "exact", "R", "R_mem"]
            ]
        )
    if not frames:
        raise ValueError(
            "no run has a pos.csv (parts of speech are counted when the data has tags and config.eval.pos is on)"
        )
    return pd.concat(frames, ignore_index=True)


def analyze_runs(workdirs: list[str], out_dir: str) -> dict[str, pd.DataFrame]:
    curves = load_curves(workdirs)
    by_size = stats.over_seeds(curves, ["params", "size", "tag", "epoch"], ["R", "R_mem"])
    last = curves[curves["epoch"] == curves.groupby("run")["epoch"].transform("max")]
    final = stats.over_seeds(last, ["params", "size", "tag"], ["R", "R_mem", "epoch"])
    final = final.sort_values(["params", "R_mem_mean"], ascending=[True, False], kind="stable", ignore_index=True)
    result = {"curves": curves, "by_size": by_size, "final": final}
    write_csvs(out_dir, "pos", result)
    table = pd.DataFrame(
        {
            "size": final["size"],
            "tag": final["tag"],
            "seeds": final["n_seeds"],
            "epoch": final["epoch_mean"].round().astype(int),
            "R": [stats.format_ci(r.R_mean, r.R_ci_low, r.R_ci_high) for r in final.itertuples()],
            "R_mem": [stats.format_ci(r.R_mem_mean, r.R_mem_ci_low, r.R_mem_ci_high) for r in final.itertuples()],
        }
    )
    runs.atomic_write_text(os.path.join(out_dir, "pos_final.md"), tables.to_markdown(table) + "\n")
    runs.atomic_write(os.path.join(out_dir, "pos.png"), lambda tmp: _plot(by_size, tmp))
    return result


def _plot(by_size: pd.DataFrame, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(by_size.sort_values("params")["size"]))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes)), squeeze=False, constrained_layout=True)
    tags = sorted(by_size["tag"].unique())
    colours = {tag: plt.get_cmap("tab20")(i % 20) for i, tag in enumerate(tags)}
    for row, size in enumerate(sizes):
        part = by_size[by_size["size"] == size]
        for col, metric in enumerate(("R", "R_mem")):
            ax = axes[row, col]
            for tag in tags:
                curve = part[part["tag"] == tag].sort_values("epoch")
                if curve.empty:
                    continue
                ax.plot(curve["epoch"], curve[f"{metric}_mean"], color=colours[tag], lw=1.2, label=tag)
                ax.fill_between(
                    curve["epoch"],
                    curve[f"{metric}_ci_low"],
                    curve[f"{metric}_ci_high"],
                    color=colours[tag],
                    alpha=0.15,
                    lw=0,
                )
            label = "R(p): predicted token has part of speech p" if metric == "R" else "R_mem(p): exactly memorized"
            ax.set(xlabel="epochs", ylabel=metric, ylim=(0, 1), title=f"{size}: {label}")
            if col == 1:
                ax.legend(fontsize=7, ncol=2)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
