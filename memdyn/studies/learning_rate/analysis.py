"""``memdyn analyze learning_rate``: memorization speed against the peak learning rate, per size (Tirumala et al.
2022: T(N, tau) is U-shaped in the learning rate, larger models memorize faster at every rate, and are less
sensitive to it).

Per run, ``memorization.summarize_run`` (M_e from the training-set evaluations at epoch ends, T(N, tau) in epochs,
the overfitting point and M(f) there). Per (size, peak_lr): means and 95% t intervals over seeds; a T(N, tau) mean
only when every seed reached tau. Per size and tau:

- ``best_lr``: the rate with the lowest mean T(N, tau) among those every seed reached tau at; ``interior`` is
  True when it is neither the smallest nor the largest rate of the grid (a U rather than a slope), and
  ``u_shape`` True when, in addition, both the next lower and the next higher rate have a higher T(N, tau) or
  never reach tau (their interval excluding the best rate's mean, or not reaching tau in every seed). The grid
  is every rate any size ran; a neighbour a size did not run makes no U.
- ``rates_reached``: how many rates of the grid reach tau in every seed; ``spread``: log2 of the slowest reached
  rate's mean T over the fastest's (0 when one rate reaches tau): a size that reaches tau at more rates, and with
  a smaller spread, is less sensitive to the rate.

``chosen``: per size the rate with the highest mean final M(f) (the learning rate chosen per size), and the
memorization table (``memorization.by_size``) of the runs at that rate, with their M_e per epoch and T(N, tau)
against parameters drawn as ``memdyn analyze memorization`` draws them. The rate is chosen on the same seeds it
is then reported on, which favours it slightly; the document says so beside the table.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import Options, register, stats, tables, write_csvs
from memdyn.studies.memorization import analysis as mem
from memdyn.studies.memorization import plots as mem_plots

TAUS = (0.3, 0.5, 0.7, 0.9)


@register(
    "learning_rate",
    help="T(N, tau) against the peak learning rate per size (U-shape, sensitivity), and "
    "the memorization table at the rate chosen per size, 95% CIs over seeds",
    outputs="learning_rate_runs.csv, learning_rate_grid.csv/.md, learning_rate_shape.csv/.md, "
    "learning_rate_chosen.csv/.md, learning_rate.png, learning_rate_chosen_epochs.png, "
    "learning_rate_chosen_t_tau.png",
)
def run(options: Options) -> pd.DataFrame:
    result = analyze_runs(options.workdirs, options.out_dir, options.taus or TAUS)
    return result["shape"]


def grid(summary: pd.DataFrame, taus) -> pd.DataFrame:
    """Means and 95% t intervals over seeds per (size, peak_lr): ``memorization.by_size`` of the runs."""
    return mem.by_size(summary, taus)


def shape(table: pd.DataFrame, taus) -> pd.DataFrame:
    """Per size and tau: best_lr, interior, u_shape, rates_reached, rates and spread (see the module docstring).
    The grid is every rate any size ran; a size's missing rate counts as neither slower nor faster."""
    grid_rates = np.sort(table["peak_lr"].astype(float).unique())
    rows = []
    for (size, params), part in table.groupby(["size", "params"], sort=False):
        part = part.set_index(part["peak_lr"].astype(float)).reindex(grid_rates)  # NaN rows: rates not run
        ran = part["n_seeds"].notna().to_numpy()
        for tau in taus:
            c = f"T_epochs_{mem.tau_label(tau)}"
            mean, low = part[f"{c}_mean"].to_numpy(float), part[f"{c}_ci_low"].to_numpy(float)
            reached = np.isfinite(mean)
            row = {
                "size": size,
                "params": params,
                "tau": tau,
                "rates": int(ran.sum()),
                "rates_reached": int(reached.sum()),
                "best_lr": math.nan,
                "best_T": math.nan,
                "interior": False,
                "u_shape": False,
                "spread": math.nan,
            }
            if reached.any():
                best = int(np.nanargmin(np.where(reached, mean, np.inf)))
                row.update(best_lr=grid_rates[best], best_T=mean[best], interior=0 < best < len(grid_rates) - 1)
                if mean[best] > 0:
                    row["spread"] = float(np.log2(np.nanmax(mean[reached]) / mean[best]))
                if row["interior"]:  # each neighbour run, and slower: never reached, or its interval above
                    slower = [ran[i] and (not reached[i] or low[i] > mean[best]) for i in (best - 1, best + 1)]
                    row["u_shape"] = bool(all(slower))
            rows.append(row)
    return pd.DataFrame(rows)


def chosen_runs(summary: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The runs of each size at its rate with the highest mean final M(f)."""
    best = table.loc[table.groupby("size", sort=False)["final_m_mean"].idxmax(), ["size", "peak_lr"]]
    return summary.merge(best, on=["size", "peak_lr"])


def analyze_runs(workdirs: list[str], out_dir: str, taus=TAUS) -> dict[str, pd.DataFrame]:
    workdirs = list(dict.fromkeys(os.path.abspath(w) for w in workdirs))  # a sweep given twice counts once
    loaded = [mem.summarize_run(w, taus, m_from="train_eval") for w in workdirs]
    for workdir, (epochs, row) in zip(workdirs, loaded):  # runs of two sweeps may share a name
        epochs["workdir"] = row["workdir"] = workdir
    summary = pd.DataFrame([row for _, row in loaded])
    summary = summary.sort_values(["params", "peak_lr", "seed"], kind="stable", ignore_index=True)
    if summary["causal"].nunique() > 1:
        raise ValueError("the runs mix causal and masked LMs: analyze one objective at a time")
    table = grid(summary, taus)
    picked = chosen_runs(summary, table)
    result = {"runs": summary, "grid": table, "shape": shape(table, taus), "chosen": mem.by_size(picked, taus)}
    write_csvs(out_dir, "learning_rate", result)
    runs.atomic_write_text(
        os.path.join(out_dir, "learning_rate_grid.md"), tables.to_markdown(_grid_table(table, taus)) + "\n"
    )
    runs.atomic_write_text(
        os.path.join(out_dir, "learning_rate_shape.md"), tables.to_markdown(_shape_table(result["shape"])) + "\n"
    )
    runs.atomic_write_text(
        os.path.join(out_dir, "learning_rate_chosen.md"), mem._ci_markdown(result["chosen"], taus) + "\n"
    )
    runs.atomic_write(os.path.join(out_dir, "learning_rate.png"), lambda tmp: _plot(table, taus, tmp))
    # memorization across sizes at the chosen rates: M_e per epoch and T(N, tau) against parameters
    epochs = pd.concat([e for e, _ in loaded], ignore_index=True).merge(picked[["workdir"]], on="workdir")
    runs.atomic_write(
        os.path.join(out_dir, "learning_rate_chosen_epochs.png"), lambda tmp: mem_plots.plot_epochs(epochs, picked, tmp)
    )
    runs.atomic_write(
        os.path.join(out_dir, "learning_rate_chosen_t_tau.png"),
        lambda tmp: mem_plots.plot_t_tau(result["chosen"], taus, tmp, split_by=("causal",)),
    )
    return result


def _cell(row, column: str, digits: int = 3) -> str:
    if f"{column}_n" in row and row[f"{column}_n"] < row["n_seeds"]:
        return f"reached by {int(row[f'{column}_n'])}/{int(row['n_seeds'])}"
    return stats.format_ci(row[f"{column}_mean"], row[f"{column}_ci_low"], row[f"{column}_ci_high"], digits)


def _grid_table(table: pd.DataFrame, taus) -> pd.DataFrame:
    rows = []
    for _, row in table.iterrows():
        out = {
            "size": row["size"],
            "peak lr": f"{row['peak_lr']:g}",
            "seeds": int(row["n_seeds"]),
            "final M": _cell(row, "final_m"),
        }
        out.update({f"T(N, {mem.tau_label(t)})": _cell(row, f"T_epochs_{mem.tau_label(t)}", 1) for t in taus})
        rows.append(out)
    return pd.DataFrame(rows)


def _shape_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "size": frame["size"],
            "τ": frame["tau"].map(mem.tau_label),
            "rates reaching τ": [f"{r}/{n}" for r, n in zip(frame["rates_reached"], frame["rates"])],
            "best lr": frame["best_lr"].map(lambda v: f"{v:g}" if np.isfinite(v) else ""),
            "T at best": frame["best_T"].map(lambda v: f"{v:.1f}" if np.isfinite(v) else ""),
            "best inside the grid": frame["interior"],
            "U-shape": frame["u_shape"],
            "log2 spread": frame["spread"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else ""),
        }
    )


def _plot(table: pd.DataFrame, taus, png_path: str) -> None:
    plt = mem_plots.pyplot()
    panels = [*taus, "final_m"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), constrained_layout=True)
    colours = mem_plots.size_colours(table, plt)
    rates = table["peak_lr"].astype(float)
    for ax, panel in zip(np.atleast_1d(axes), panels):
        column = "final_m" if panel == "final_m" else f"T_epochs_{mem.tau_label(panel)}"
        ax.set_xlim(rates.min() / 1.6, rates.max() * 1.6)
        if table[f"{column}_mean"].isna().all():
            ax.text(0.5, 0.5, "no rate reached τ\nin every seed", transform=ax.transAxes, ha="center", va="center")
        for size, colour in colours.items():
            part = table[table["size"] == size].sort_values("peak_lr")
            points = part.dropna(subset=[f"{column}_mean"])
            if points.empty:
                continue
            low = (points[f"{column}_mean"] - points[f"{column}_ci_low"]).fillna(0)
            high = (points[f"{column}_ci_high"] - points[f"{column}_mean"]).fillna(0)
            ax.errorbar(
                points["peak_lr"],
                points[f"{column}_mean"],
                yerr=[low, high],
                color=colour,
                marker="o",
                ms=4,
                capsize=3,
                label=size,
            )
        ax.set_xscale("log")
        if panel == "final_m":
            ax.set(xlabel="peak learning rate", ylabel="final M(f)", ylim=(0, 1), title="M(f) after the last epoch")
        else:
            ax.set(
                xlabel="peak learning rate",
                ylabel="T(N, τ) [epochs]",
                title=f"τ = {mem.tau_label(panel)} (rates where a seed\nnever got there are left out)",
            )
    np.atleast_1d(axes)[-1].legend(fontsize=7, title="size", title_fontsize=7)
    fig.suptitle("memorization speed against the learning rate: mean, 95% CI over seeds", fontsize=10)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)
