"""``memdyn analyze memsinks``: does dropping the sinks forget the repeated sequences and keep general ability?

Reads each run's eval.csv (sets ``validation``: general held-out data, ``duplicates``: the repeated sequences,
``control``: never-seen sequences from the same distribution; ``<set>@<mode>`` for MemSinks eval modes) and,
when present, the per-id deletion file ``deletion.csv`` that ``launch/memsinks.py`` writes into a MemSinks run.

Every run is one *condition* (from its config: standard, memsinks, shared, dedup, placebo) and is read in each
*variant* it was evaluated in: ``kept`` (the set as trained: sequence masks, or the shared sink on), ``dropped``
(``@dropout``: sinks dropped) and ``all`` (``@all``: pool at p_mem). Per seed, against the standard run of the
same seed (the same data order):

  gap_closed  = (L_v(repeated) - L_std(repeated)) / (L_std(never-seen) - L_std(repeated))
                0: the variant fits the repeated sequences as well as standard training; 1: as badly as sequences
                it never saw (the paper's ">50% of the way towards the never-seen loss" is gap_closed > 0.5)
  val_delta   = L_v(validation) - L_std(validation)   (general ability; 0: as good as standard training)
  own_gap     = L_v(never-seen) - L_v(repeated)       (what the variant still knows of the repeated sequences)

at the last evaluation, as means with 95% t-intervals over seeds. Writes memsinks_curves.csv (every evaluation),
memsinks_summary.csv (per run and variant), memsinks_conditions.csv/.md (over seeds), memsinks_comparisons.csv
(paired differences between variants, seed by seed: MemSinks dropped against the placebo, dedup, standard and
shared-sink runs), memsinks_deletion.csv (when deletion files exist) and memsinks.png.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from absl import logging

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register
from memdyn.studies.stats import format_ci, over_seeds, t_interval

SETS = {"validation": "validation", "duplicates": "repeated", "control": "never_seen"}
VARIANTS = {"": "kept", "dropout": "dropped", "all": "all"}
METRICS = ["validation", "repeated", "never_seen", "gap_closed", "val_delta", "own_gap"]


def condition(config: dict) -> str:
    """The experiment condition a run's config describes."""
    m = config.get("memsinks") or {}
    method = m.get("method", "none")
    if method == "shared":
        return "shared"
    if method == "sinks":
        return "placebo" if m.get("ids") == "placebo" else "memsinks"
    repeated = (config.get("data") or {}).get("tracked", {}).get("duplicate_count", 1)
    return "dedup" if repeated == 1 else "standard"


def load_curves(workdirs: list[str]) -> pd.DataFrame:
    """One row per (run, variant, step): losses of the three sets, with condition and seed."""
    frames = []
    for workdir in workdirs:
        config = runs.read_config(workdir)
        evals = read_csv(os.path.join(workdir, "eval.csv"))
        if evals.empty:
            continue
        evals = evals[evals["at_insertion"].isna() | (evals["at_insertion"].astype(str) == "")]
        parts = evals["set"].str.partition("@")
        evals = evals.assign(base=parts[0], mode=parts[2])
        evals = evals[evals["base"].isin(list(SETS)) & evals["mode"].isin(list(VARIANTS))]
        wide = evals.pivot_table(index=["mode", "step"], columns="base", values="loss").rename(columns=SETS)
        if not set(SETS.values()) <= set(wide.columns):
            continue  # not a run of this experiment
        wide = wide.reset_index()
        wide.insert(0, "variant", wide.pop("mode").map(VARIANTS))
        wide.insert(0, "seed", int(config["seed"]))
        wide.insert(0, "condition", condition(config))
        wide.insert(0, "run", runs.run_name(workdir))
        wide.insert(0, "workdir", workdir)
        frames.append(wide)
    if not frames:
        raise ValueError(f"none of the {len(workdirs)} run(s) evaluates the sets {tuple(SETS)} (configs/memsinks.py)")
    return pd.concat(frames, ignore_index=True)


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run and variant at its last evaluation, with the paired quantities against standard training."""
    last = curves.loc[curves.groupby(["workdir", "variant"])["step"].idxmax()].copy()
    standard = last[(last["condition"] == "standard") & (last["variant"] == "kept")].set_index("seed")
    unpaired = sorted(set(last["seed"]) - set(standard.index))
    if unpaired:
        logging.warning(
            "no standard run for seed(s) %s: their gap closed and validation differences are NaN "
            "(run configs/memsinks.py:standard with the same seeds)",
            unpaired,
        )
    ref = standard.reindex(last["seed"])
    last["gap_closed"] = (last["repeated"].values - ref["repeated"].values) / (
        ref["never_seen"].values - ref["repeated"].values
    )
    last["val_delta"] = last["validation"].values - ref["validation"].values
    last["own_gap"] = last["never_seen"] - last["repeated"]
    return last.reset_index(drop=True)


def conditions(summary: pd.DataFrame) -> pd.DataFrame:
    order = {c: i for i, c in enumerate(("standard", "dedup", "memsinks", "placebo", "shared"))}
    table = over_seeds(summary, ["condition", "variant"], METRICS)
    table["order"] = table["condition"].map(order).fillna(99) * 10 + table["variant"].map(
        {"kept": 0, "all": 1, "dropped": 2}
    )
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


COMPARISONS = [  # (a, b, metric): a − b per seed
    (("memsinks", "dropped"), ("placebo", "dropped"), "gap_closed"),
    (("memsinks", "dropped"), ("placebo", "dropped"), "validation"),
    (("memsinks", "dropped"), ("dedup", "kept"), "validation"),
    (("memsinks", "dropped"), ("standard", "kept"), "validation"),
    (("memsinks", "dropped"), ("shared", "dropped"), "validation"),
]


def comparisons(summary: pd.DataFrame) -> pd.DataFrame:
    """Paired differences between two variants, seed by seed, with 95% t intervals (seeds present in both)."""
    rows = []
    for (ca, va), (cb, vb), metric in COMPARISONS:
        a = summary[(summary["condition"] == ca) & (summary["variant"] == va)].set_index("seed")[metric]
        b = summary[(summary["condition"] == cb) & (summary["variant"] == vb)].set_index("seed")[metric]
        seeds = a.index.intersection(b.index)
        if len(seeds) == 0:
            continue
        mean, low, high, n = t_interval((a[seeds] - b[seeds]).values)
        rows.append(
            dict(
                a=f"{ca}:{va}",
                b=f"{cb}:{vb}",
                metric=metric,
                difference_mean=mean,
                difference_ci_low=low,
                difference_ci_high=high,
                n_seeds=n,
            )
        )
    return pd.DataFrame(rows)


def conditions_markdown(table: pd.DataFrame) -> str:
    lines = [
        "| condition | variant | seeds | validation loss | repeated loss | never-seen loss | gap closed | "
        "val loss − standard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        cells = [
            format_ci(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
            for m in ("validation", "repeated", "never_seen", "gap_closed", "val_delta")
        ]
        lines.append(f"| {r['condition']} | {r['variant']} | {int(r['n_seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deletion(workdirs: list[str]) -> pd.DataFrame:
    """The deletion files of the runs, with condition and seed (empty when none exists)."""
    frames = []
    for workdir in workdirs:
        path = os.path.join(workdir, "deletion.csv")
        if os.path.isfile(path):
            config = runs.read_config(workdir)
            frames.append(read_csv(path).assign(condition=condition(config), seed=int(config["seed"])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def deletion_table(frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["pool_fraction_excluded", "excluded_loss", "other_repeated_loss", "validation_loss"]
    return over_seeds(frame, ["condition", "mode", "excluded_ids"], columns)


def analyze_runs(workdirs: list[str], out_dir: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves = load_curves(workdirs)
    summary = summarize(curves)
    table = conditions(summary)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write = lambda frame, name: runs.atomic_write(  # noqa: E731
            os.path.join(out_dir, name), lambda tmp: frame.to_csv(tmp, index=False)
        )
        write(curves.drop(columns="workdir"), "memsinks_curves.csv")
        write(summary.drop(columns="workdir"), "memsinks_summary.csv")
        write(table, "memsinks_conditions.csv")
        write(comparisons(summary), "memsinks_comparisons.csv")
        runs.atomic_write_text(os.path.join(out_dir, "memsinks_conditions.md"), conditions_markdown(table) + "\n")
        deleted = deletion(workdirs)
        if not deleted.empty:
            write(deletion_table(deleted), "memsinks_deletion.csv")
        _plot(curves, os.path.join(out_dir, "memsinks.png"))
    return summary, table


@register(
    "memsinks",
    help="MemSinks vs standard, shared-sink, dedup and placebo training: validation, repeated "
    "and never-seen losses, the gap closed with sinks dropped, 95% CIs over seeds",
    outputs="memsinks_curves.csv, memsinks_summary.csv, memsinks_conditions.csv/.md, memsinks_comparisons.csv, "
    "memsinks_deletion.csv (when a run has deletion.csv), memsinks.png",
)
def run(options: Options) -> pd.DataFrame:
    table = analyze_runs(options.workdirs, options.out_dir)[1]
    return table[
        [
            "condition",
            "variant",
            "n_seeds",
            "validation_mean",
            "repeated_mean",
            "never_seen_mean",
            "gap_closed_mean",
            "val_delta_mean",
        ]
    ]


_SHOWN = [
    ("standard", "kept", "standard"),
    ("dedup", "kept", "dedup"),
    ("memsinks", "kept", "MemSinks, sinks kept"),
    ("memsinks", "dropped", "MemSinks, sinks dropped"),
    ("placebo", "dropped", "placebo, sinks dropped"),
    ("shared", "kept", "shared sink, kept (its dropped losses are in the table)"),
]


def _plot(curves: pd.DataFrame, png_path: str) -> None:
    """Validation loss, repeated-sequence loss and never-seen loss against steps: mean and 95% band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("validation", "validation loss (general data)"),
        ("repeated", "loss on the repeated sequences"),
        ("never_seen", "loss on never-seen sequences"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), constrained_layout=True)
    for i, (cond, variant, label) in enumerate(_SHOWN):
        part = curves[(curves["condition"] == cond) & (curves["variant"] == variant)]
        if part.empty:
            continue
        seeds = part["seed"].nunique()
        for ax, (column, _) in zip(axes, panels):
            points = [(step, *t_interval(g[column])) for step, g in part.groupby("step")]
            step, mean, low, high, _ = (np.array(v) for v in zip(*points))
            ls = "--" if variant == "kept" and cond not in ("standard", "dedup") else "-"
            ax.plot(step, mean, color=f"C{i}", ls=ls, lw=1.3, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                ax.fill_between(step, low, high, color=f"C{i}", alpha=0.18, lw=0)
    standard = curves[(curves["condition"] == "standard") & (curves["variant"] == "kept")]
    if not standard.empty:  # the target of forgetting: standard training's loss on sequences it never saw
        never = standard.groupby("step")["never_seen"].mean()
        axes[1].plot(never.index, never.values, color="black", ls=":", lw=1.2, label="standard, never-seen")
    for ax, (_, title) in zip(axes, panels):
        ax.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axes[1].legend(fontsize=7)
    fig.suptitle("Memorization sinks: mean and 95% CI over seeds")
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
