"""``memdyn analyze unique_ids``: memorization speed with and without unique identifiers (Tirumala et al. 2022),
like for like (configs/unique_ids.py).

Conditions are ``data.doc_ids``: ``none`` (the original vocabulary), ``control`` (the vocabulary enlarged by one
unused id per document) and ``prefix`` ("document ID <id>" before every example). The three cut documents at the
same places, so they score the same content tokens:

- ``M_content_e``: M(f) of the training set after ``e`` epochs over the content tokens, from eval.csv rows
  ``train@content`` for a prefix run (targets after the prefix and the first content token) and ``train`` for
  the others (every target is content there). The three conditions count the same tokens (``num_tokens``).
- ``M_all_e``: M(f) over every scored position (a prefix run's also counts the "ID" and ``<id>`` targets and
  the first content token, which it predicts from the prefix).
- ``T(N, tau)``: the first epoch with ``M_content_e >= tau``; NaN if never.

Per condition: means and 95% t intervals over seeds. Condition differences are paired by seed (the same seed
gives the same example order): the mean difference and its t interval over the seeds both conditions have, NaN
unless the quantity is finite for every one of them (a T(N, tau) that some seed never reached is not averaged
over the others; the tables say "reached by k/n"). The runs must differ in nothing but ``data.doc_ids`` and the
seed, with ``data.chunk_len`` set, one run per (condition, seed), and equal content token counts after every
epoch across conditions; anything else is refused. (A masked LM draws its masks by position, so its conditions
would not score the same tokens: the study is for causal LMs.)
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register, stats, tables, write_csvs
from memdyn.studies.memorization.measures import DEFAULT_TAUS, steps_per_epoch, tau_label

CONDITIONS = ("none", "control", "prefix")
PAIRS = (("control", "none"), ("prefix", "control"), ("prefix", "none"))
AT_EPOCHS = (10, 20, 30, 40)  # M_content compared at these epochs (those a run reached)


@register(
    "unique_ids",
    help="M(f) and T(N, tau) over content tokens for the original vocabulary, an enlarged one "
    "and document-ID prefixes, paired differences with 95% CIs over seeds",
    outputs="unique_ids_epochs.csv, unique_ids_runs.csv, unique_ids_conditions.csv/.md, "
    "unique_ids_differences.csv/.md, unique_ids_curve_differences.csv, unique_ids.png",
)
def run(options: Options) -> pd.DataFrame:
    result = analyze_runs(options.workdirs, options.out_dir, options.taus or DEFAULT_TAUS)
    return result["conditions"][["condition", "n_seeds", "final_m_content_mean", "final_m_all_mean"]]


def epoch_frame(workdir: str) -> pd.DataFrame:
    """One row per epoch end of a run: condition, seed, epoch, M_content, M_all, content and all token counts."""
    config = runs.read_config(workdir)
    if config is None:
        raise ValueError(f"{workdir}: no memdyn run (no config.json)")
    condition = config.get("data", {}).get("doc_ids", "none")
    evals = read_csv(os.path.join(workdir, "eval.csv"))
    spe = steps_per_epoch(read_csv(os.path.join(workdir, "train.csv")))
    content_set = "train@content" if condition == "prefix" else "train"
    frames = {}
    for name, set_name in (("all", "train"), ("content", content_set)):
        rows = evals[(evals["set"] == set_name) & (evals["step"] % spe == 0)]
        rows = rows.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
        frames[name] = pd.DataFrame(
            {
                "epoch": (rows["step"] // spe).astype(int).to_numpy(),
                f"m_{name}": rows["exact_match"].astype(float).to_numpy(),
                f"tokens_{name}": rows["num_tokens"].astype(np.int64).to_numpy(),
            }
        )
    if frames["content"].empty:
        raise ValueError(
            f"{workdir}: eval.csv has no {content_set!r} rows at epoch ends (train with "
            "config.eval.epoch_sets holding 'train')"
        )
    frame = frames["content"].merge(frames["all"], on="epoch", how="left")
    identity = runs.identity(config, workdir)
    setup = {
        "size": identity["size"],
        "peak_lr": identity["peak_lr"],
        "seq_len": identity["seq_len"],
        "causal": identity["causal"],
        "chunk_len": config.get("data", {}).get("chunk_len"),
        "num_steps": config.get("num_steps"),
    }
    return frame.assign(
        workdir=os.path.abspath(workdir), run=identity["run"], seed=identity["seed"], condition=condition, **setup
    )


def run_summary(epochs: pd.DataFrame, taus) -> dict:
    """T(N, tau) over content tokens, final M and M_content at AT_EPOCHS for one run's epoch frame."""
    frame = epochs.sort_values("epoch")
    row = {k: frame[k].iloc[0] for k in ("workdir", "run", "size", "seed", "condition")}
    row.update(
        final_epoch=int(frame["epoch"].iloc[-1]),
        final_m_content=float(frame["m_content"].iloc[-1]),
        final_m_all=float(frame["m_all"].iloc[-1]),
    )
    for tau in taus:
        hit = frame[frame["m_content"] >= tau]
        row[f"T_{tau_label(tau)}"] = float(hit["epoch"].iloc[0]) if len(hit) else math.nan
    for e in AT_EPOCHS:
        at = frame[frame["epoch"] == e]
        row[f"m_content_at_{e}"] = float(at["m_content"].iloc[0]) if len(at) else math.nan
    return row


def paired_differences(summary: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per (a, b) in PAIRS and column: mean over seeds of a's value minus b's of the same seed, 95% t interval."""
    rows = []
    for a, b in PAIRS:
        left = summary[summary["condition"] == a].set_index("seed")
        right = summary[summary["condition"] == b].set_index("seed")
        seeds = sorted(set(left.index) & set(right.index))
        if not seeds:
            continue
        for column in columns:
            diff = left.loc[seeds, column].to_numpy(float) - right.loc[seeds, column].to_numpy(float)
            mean, low, high, n = stats.t_interval(diff)
            if n < len(seeds):  # some seed has no value in a or b: no mean over the others
                mean = low = high = math.nan
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "quantity": column,
                    "seeds": len(seeds),
                    "n": n,
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=["a", "b", "quantity", "seeds", "n", "mean", "ci_low", "ci_high"])


def _check_like_for_like(epochs: pd.DataFrame) -> None:
    for field in ("size", "peak_lr", "seq_len", "causal", "chunk_len", "num_steps"):
        values = epochs[field].drop_duplicates()
        if len(values) > 1:
            raise ValueError(
                f"the runs differ in {field} ({sorted(map(str, values))}): the unique-identifier "
                "conditions must differ only in data.doc_ids and the seed"
            )
    if epochs["chunk_len"].isna().any():
        raise ValueError(
            "a run has no config.data.chunk_len: without it the conditions cut documents at different "
            "places (configs/unique_ids.py sets it)"
        )
    if not epochs["causal"].all():
        raise ValueError("the runs are masked LMs, whose conditions do not score the same tokens; use causal LMs")
    runs_per = epochs.drop_duplicates("workdir").groupby(["condition", "seed"]).size()
    if (runs_per > 1).any():
        raise ValueError(f"several runs of one (condition, seed): {list(runs_per[runs_per > 1].index)}")
    counts = epochs.groupby("epoch")["tokens_content"].nunique()
    if (counts > 1).any():
        raise ValueError(
            f"the conditions score different numbers of content tokens after epoch "
            f"{int(counts[counts > 1].index[0])}: not the same documents at the same places"
        )


def analyze_runs(workdirs: list[str], out_dir: str, taus=DEFAULT_TAUS) -> dict[str, pd.DataFrame]:
    workdirs = list(dict.fromkeys(os.path.abspath(w) for w in workdirs))
    epochs = pd.concat([epoch_frame(w) for w in workdirs], ignore_index=True)
    unknown = set(epochs["condition"]) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"runs with config.data.doc_ids={sorted(unknown)}: expected {CONDITIONS}")
    _check_like_for_like(epochs)
    summary = pd.DataFrame([run_summary(g, taus) for _, g in epochs.groupby("workdir", sort=True)])
    t_columns = [f"T_{tau_label(t)}" for t in taus]
    m_columns = ["final_m_content", "final_m_all"] + [f"m_content_at_{e}" for e in AT_EPOCHS]
    conditions = stats.over_seeds(summary, ["condition"], m_columns + t_columns, require_all=True)
    conditions = conditions.set_index("condition").loc[[c for c in CONDITIONS if c in set(summary["condition"])]]
    conditions = conditions.reset_index()
    differences = paired_differences(
        summary, ["final_m_content"] + [f"m_content_at_{e}" for e in AT_EPOCHS] + t_columns
    )
    curves = stats.over_seeds(epochs, ["condition", "epoch"], ["m_content", "m_all"])
    curve_differences = _epoch_differences(epochs)
    result = {
        "epochs": epochs,
        "runs": summary,
        "conditions": conditions,
        "differences": differences,
        "curve_differences": curve_differences,
    }
    write_csvs(out_dir, "unique_ids", result)
    runs.atomic_write_text(
        os.path.join(out_dir, "unique_ids_conditions.md"),
        tables.to_markdown(_conditions_table(conditions, taus)) + "\n",
    )
    runs.atomic_write_text(
        os.path.join(out_dir, "unique_ids_differences.md"), tables.to_markdown(_differences_table(differences)) + "\n"
    )
    runs.atomic_write(os.path.join(out_dir, "unique_ids.png"), lambda tmp: _plot(curves, curve_differences, tmp))
    return result


def _ci(row, column: str, digits: int = 3) -> str:
    return stats.format_ci(row[f"{column}_mean"], row[f"{column}_ci_low"], row[f"{column}_ci_high"], digits)


def _conditions_table(conditions: pd.DataFrame, taus) -> pd.DataFrame:
    out = []
    for _, row in conditions.iterrows():
        cells = {"condition": row["condition"], "seeds": int(row["n_seeds"])}
        for e in AT_EPOCHS:
            cells[f"M_content @{e}"] = _ci(row, f"m_content_at_{e}")
        cells["final M_content"] = _ci(row, "final_m_content")
        cells["final M_all"] = _ci(row, "final_m_all")
        for tau in taus:
            column = f"T_{tau_label(tau)}"
            cells[f"T(N, {tau_label(tau)})"] = (
                _ci(row, column, 1)
                if row[f"{column}_n"] == row["n_seeds"]
                else f"reached by {int(row[f'{column}_n'])}/{int(row['n_seeds'])}"
            )
        out.append(cells)
    return pd.DataFrame(out)


def _differences_table(differences: pd.DataFrame) -> pd.DataFrame:
    cells = [
        stats.format_ci(r.mean, r.ci_low, r.ci_high, 3) if r.n == r.seeds else f"reached by {r.n}/{r.seeds} pairs"
        for r in differences.itertuples()
    ]
    return pd.DataFrame(
        {
            "difference": differences["a"] + " − " + differences["b"],
            "quantity": differences["quantity"],
            "seeds": differences["seeds"],
            "mean [95% CI]": cells,
        }
    )


def _epoch_differences(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per pair (a, b) of PAIRS and epoch: M_content of a minus b, paired by seed, mean and 95% t interval."""
    table = epochs.pivot_table(index=["seed", "epoch"], columns="condition", values="m_content")
    rows = []
    for a, b in PAIRS:
        if a not in table or b not in table:
            continue
        diff = (table[a] - table[b]).rename("diff").reset_index()
        for epoch, group in diff.groupby("epoch"):
            mean, low, high, n = stats.t_interval(group["diff"])
            if n < len(group):
                mean = low = high = math.nan
            rows.append({"a": a, "b": b, "epoch": int(epoch), "seeds": n, "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["a", "b", "epoch", "seeds", "mean", "ci_low", "ci_high"])


def _plot(curves: pd.DataFrame, differences: pd.DataFrame, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"none": "tab:blue", "control": "tab:orange", "prefix": "tab:green"}
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for condition in [c for c in CONDITIONS if c in set(curves["condition"])]:
        part = curves[curves["condition"] == condition].sort_values("epoch")
        seeds = int(part["n_seeds"].max())
        ax.plot(
            part["epoch"],
            part["m_content_mean"],
            color=colours[condition],
            lw=1.6,
            label=f"{condition}: content tokens ({seeds} seeds)",
        )
        ax.fill_between(
            part["epoch"],
            part["m_content_ci_low"],
            part["m_content_ci_high"],
            color=colours[condition],
            alpha=0.2,
            lw=0,
        )
        if condition == "prefix":
            ax.plot(
                part["epoch"],
                part["m_all_mean"],
                color=colours[condition],
                lw=1.0,
                ls="--",
                label="prefix: every position (ID tokens included)",
            )
    ax.set(
        xlabel="epochs",
        ylabel="M(f) of the training set",
        ylim=(0, 1),
        title="unique identifiers: mean and 95% CI over seeds",
    )
    ax.legend(fontsize=8)
    for (a, b), part in differences.groupby(["a", "b"], sort=False):
        part = part.sort_values("epoch")
        colour = {"control": "tab:orange", "prefix": "tab:green"}[a] if b == "none" else "tab:purple"
        right.plot(part["epoch"], part["mean"], color=colour, lw=1.4, label=f"{a} − {b}")
        right.fill_between(part["epoch"], part["ci_low"], part["ci_high"], color=colour, alpha=0.2, lw=0)
    right.axhline(0, color="black", lw=0.6)
    right.set(
        xlabel="epochs",
        ylabel="difference in M_content (paired by seed)",
        title="differences between conditions: mean and 95% CI over seeds",
    )
    right.legend(fontsize=8)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
