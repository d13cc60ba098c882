"""``memdyn analyze predict``: how well the memorized set of a cheaper model predicts a target model's
(Biderman et al. 2023), from the k-extractability files ``memdyn extract --set=train`` writes into each run
(``<run>/extract/train-<step>.csv``).

- Target, per seed: the run with the most parameters, at its last scored checkpoint. Predictors: every other
  (run, checkpoint) of the same seed, scored on the same training sequences.
- precision = |memorized by the predictor ∩ by the target| / |memorized by the predictor| (NaN when the
  predictor memorizes nothing); recall = |∩| / |memorized by the target|.
- Compute C = 6·N·D: N the predictor's parameters, D the tokens it trained on up to the checkpoint (the
  checkpoint's ``tokens_seen``, which ``memdyn extract`` records; older extractions: train.csv's row of the
  checkpoint's last step); ``compute_fraction`` = C / C of the target.
- Families: ``target checkpoint`` (an earlier checkpoint of the target run), ``smaller, final`` (another size at
  its last checkpoint), ``smaller, intermediate``.
- Means over seeds with 95% intervals from a two-level bootstrap (``BOOTSTRAP`` replicates): seeds resampled with
  replacement, then every drawn seed's sequences reweighted (Poisson(1) weights, the bootstrap's large-sample
  form; a seed drawn twice gets two independent reweightings),
  precision and recall recomputed from the weighted counts and averaged over the resampled seeds.
- The equi-compute view: at each predictor's compute, the best predictor of each family (by mean recall) among
  those using at most that compute.
- Per (size, checkpoint): the memorized fraction (mean and 95% t interval over seeds); per size at its last
  checkpoint, the distribution of the fractional score (``memdyn extract --score``) and the memorized fraction by
  how often a sequence occurs in the training data (the store's ``dup_counts``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import warnings

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import Options, read_csv, register, stats, tables, write_csvs

BOOTSTRAP = 2000
FAMILIES = ("target checkpoint", "smaller, final", "smaller, intermediate")
_FILE = re.compile(r"train-(\d+)\.csv$")


@register(
    "predict",
    help="memorized sets of smaller models and earlier checkpoints as predictors of the largest "
    "model's (precision, recall vs compute), with bootstrap CIs over sequences and seeds",
    outputs="predict_models.csv, predict_pairs.csv, predict_predictors.csv, predict_equicompute.csv, "
    "predict_memorized.csv, predict_scores.csv, predict_duplicates.csv, predict_tables.md, "
    "predict.png",
)
def run(options: Options) -> pd.DataFrame:
    predictors = analyze_runs(options.workdirs, options.out_dir)["predictors"]
    return predictors[["family", "size", "step", "compute_fraction_mean", "precision_mean", "recall_mean"]]


def load_models(workdirs: list[str]) -> pd.DataFrame:
    """One row per scored (run, checkpoint): identity, step, tokens trained, compute, the extract file."""
    rows = []
    for workdir in workdirs:
        config = runs.read_config(workdir)
        paths = [p for p in glob.glob(os.path.join(workdir, "extract", "train-*.csv")) if _FILE.search(p)]
        if not paths:
            continue
        train_csv = os.path.join(workdir, "train.csv")
        train = read_csv(train_csv) if os.path.isfile(train_csv) else pd.DataFrame()
        for path in paths:
            if not os.path.isfile(path + ".json"):
                continue  # an extraction still under way
            with open(path + ".json") as f:
                job = json.load(f)
            step = int(_FILE.search(path).group(1))
            tokens = job.get("tokens_seen")  # the checkpoint's own count (extractions made since it was recorded)
            if tokens is None and step == 0:
                tokens = 0
            if tokens is None:  # an older extraction: the train.csv row of the checkpoint's last step
                before = train[train["step"] == step - 1] if not train.empty else train
                if before.empty:
                    raise ValueError(
                        f"{path}: its job does not record the tokens trained and train.csv has no row "
                        f"for step {step - 1} (written every log_every steps); run `memdyn extract` "
                        "again to record them"
                    )
                tokens = int(before["tokens_seen"].iloc[0])
            tokens = int(tokens)
            params = int(config["model"]["params"])
            rows.append(
                {
                    **runs.identity(config, workdir),
                    "workdir": workdir,
                    "step": step,
                    "tokens": tokens,
                    "compute": 6.0 * params * tokens,
                    "path": path,
                    "prompt_len": job["prompt_len"],
                    "num_new": job["num_new"],
                    "has_score": bool(job.get("score", False)),
                }
            )
    if not rows:
        raise ValueError(
            "no run has k-extractability of its training set (`memdyn extract --set=train` writes "
            "<run>/extract/train-<step>.csv)"
        )
    models = pd.DataFrame(rows).sort_values(["seed", "params", "step"], kind="stable", ignore_index=True)
    last = models.groupby("run")["step"].transform("max")
    models["final"] = models["step"] == last
    for column in ("prompt_len", "num_new"):
        if models[column].nunique() > 1:
            raise ValueError(
                f"the extractions use different --{column} values {sorted(models[column].unique())}; "
                "compare like with like"
            )
    return models


def _target_of(seed_models: pd.DataFrame) -> pd.Series:
    largest = seed_models[seed_models["params"] == seed_models["params"].max()]
    if largest["run"].nunique() > 1:
        raise ValueError(
            f"seed {largest['seed'].iloc[0]}: several runs have the most parameters "
            f"({sorted(largest['run'].unique())}); one target per seed"
        )
    return largest.sort_values("step").iloc[-1]


def _family(model: pd.Series, target: pd.Series) -> str:
    if model["run"] == target["run"]:
        return "target checkpoint"
    return "smaller, final" if model["final"] else "smaller, intermediate"


def _read(path: str) -> pd.DataFrame:
    frame = read_csv(path).set_index("example_id").sort_index()
    frame["memorized"] = frame["memorized"].astype(bool)
    return frame


def pairs_and_bootstrap(models: pd.DataFrame, replicates: int = BOOTSTRAP, seed: int = 0):
    """Per seed and predictor: counts, precision, recall (``pairs``); and per predictor (size, step) the mean over
    seeds with two-level bootstrap intervals (``predictors``)."""
    rng = np.random.default_rng(seed)
    pair_rows, per_seed = [], {}
    for seed_value, seed_models in models.groupby("seed", sort=True):
        target = _target_of(seed_models)
        truth = _read(target["path"])
        tgt_N = truth["memorized"].to_numpy()
        # One Poisson(1) weight vector per (replicate, seed slot): a seed drawn twice in a replicate gets two
        # independent resamples of its sequences.
        slots = models["seed"].nunique()
        weights_RxJxN = rng.poisson(1.0, size=(replicates, slots, len(truth))).astype(np.float64)
        n_target_RxJ = weights_RxJxN @ tgt_N
        for _, model in seed_models.iterrows():
            if model["run"] == target["run"] and model["step"] == target["step"]:
                continue
            frame = _read(model["path"])
            if not frame.index.equals(truth.index):
                raise ValueError(
                    f"{model['run']}@{model['step']} scored other sequences than the target "
                    f"{target['run']}@{target['step']} (different data or prompt length)"
                )
            pred_N = frame["memorized"].to_numpy()
            both = int((pred_N & tgt_N).sum())
            row = {
                "seed": seed_value,
                "target": target["run"],
                "target_step": int(target["step"]),
                "predictor": model["run"],
                "family": _family(model, target),
                "size": model["size"],
                "params": int(model["params"]),
                "step": int(model["step"]),
                "step_fraction": model["step"] / target["step"],
                "tokens": int(model["tokens"]),
                "compute": model["compute"],
                "compute_fraction": model["compute"] / target["compute"],
                "n_predicted": int(pred_N.sum()),
                "n_target": int(tgt_N.sum()),
                "n_both": both,
                "n_sequences": len(pred_N),
                "precision": both / pred_N.sum() if pred_N.any() else math.nan,
                "recall": both / tgt_N.sum() if tgt_N.any() else math.nan,
            }
            pair_rows.append(row)
            n_pred_RxJ = weights_RxJxN @ pred_N
            n_both_RxJ = weights_RxJxN @ (pred_N & tgt_N)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed.setdefault((row["family"], row["size"], row["step"]), {})[seed_value] = (
                    np.where(n_pred_RxJ > 0, n_both_RxJ / n_pred_RxJ, np.nan),
                    np.where(n_target_RxJ > 0, n_both_RxJ / n_target_RxJ, np.nan),
                )
    pairs = pd.DataFrame(pair_rows)
    seeds = np.array(sorted(models["seed"].unique()))
    seed_draws = rng.integers(0, len(seeds), size=(replicates, len(seeds)))
    predictor_rows = []
    for (family, size, step), by_seed in per_seed.items():
        part = pairs[(pairs["family"] == family) & (pairs["size"] == size) & (pairs["step"] == step)]
        row = {
            "family": family,
            "size": size,
            "params": int(part["params"].iloc[0]),
            "step": step,
            "n_seeds": len(part),
        }
        for column in ("step_fraction", "compute_fraction", "n_predicted", "n_target", "precision", "recall"):
            row[f"{column}_mean"] = float(part[column].mean()) if part[column].notna().any() else math.nan
        for i, metric in enumerate(("precision", "recall")):
            # slot j of replicate r holds seed seed_draws[r, j], resampled with that slot's own weights
            values_SxRxJ = np.full((len(seeds), replicates, len(seeds)), np.nan)
            for k, s in enumerate(seeds):
                if s in by_seed:
                    values_SxRxJ[k] = by_seed[s][i]
            r, j = np.meshgrid(np.arange(replicates), np.arange(len(seeds)), indexing="ij")
            resampled_RxS = values_SxRxJ[seed_draws, r, j]
            with warnings.catch_warnings():  # a replicate whose drawn seeds all lack a value: NaN, dropped
                warnings.simplefilter("ignore", RuntimeWarning)
                means_R = np.nanmean(resampled_RxS, axis=1)
            finite = means_R[np.isfinite(means_R)]
            low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (math.nan, math.nan)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = float(low), float(high)
        predictor_rows.append(row)
    predictors = pd.DataFrame(predictor_rows)
    if not predictors.empty:
        order = {f: i for i, f in enumerate(FAMILIES)}
        predictors = predictors.sort_values(
            ["family", "params", "step"],
            key=lambda c: c.map(order) if c.name == "family" else c,
            kind="stable",
            ignore_index=True,
        )
    return pairs, predictors


def equicompute(predictors: pd.DataFrame) -> pd.DataFrame:
    """At each predictor's compute fraction: the best predictor of each family (highest mean recall) among those
    that used at most that compute."""
    rows = []
    levels = sorted(predictors["compute_fraction_mean"].unique())
    for level in levels:
        row = {"compute_fraction": level}
        for family in FAMILIES:
            within = predictors[(predictors["family"] == family) & (predictors["compute_fraction_mean"] <= level)]
            if within.empty:
                continue
            best = within.loc[within["recall_mean"].idxmax()] if within["recall_mean"].notna().any() else None
            if best is None:
                continue
            key = family.replace(", ", "_").replace(" ", "_")
            row.update(
                {
                    f"{key}": f"{best['size']}@{int(best['step'])}",
                    f"{key}_recall": best["recall_mean"],
                    f"{key}_precision": best["precision_mean"],
                    f"{key}_compute_fraction": best["compute_fraction_mean"],
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def memorized_fractions(models: pd.DataFrame) -> pd.DataFrame:
    """Per (size, step): memorized fraction and mean score, mean and 95% t interval over seeds."""
    rows = []
    for _, model in models.iterrows():
        frame = _read(model["path"])
        rows.append(
            {
                "size": model["size"],
                "params": int(model["params"]),
                "step": int(model["step"]),
                "seed": model["seed"],
                "final": bool(model["final"]),
                "compute": model["compute"],
                "memorized_fraction": float(frame["memorized"].mean()),
                "mean_score": float(frame["score"].mean()) if frame["score"].notna().any() else math.nan,
                "n_sequences": len(frame),
            }
        )
    per_run = pd.DataFrame(rows)
    table = stats.over_seeds(per_run, ["params", "size", "step"], ["memorized_fraction", "mean_score", "compute"])
    return table.sort_values(["params", "step"], kind="stable", ignore_index=True)


def score_distribution(models: pd.DataFrame) -> pd.DataFrame:
    """Per size at its last checkpoint: the fraction of sequences at each score value k / num_new, mean over seeds
    (empty when no extraction has ``--score``)."""
    rows = []
    for _, model in models[models["final"]].iterrows():
        frame = _read(model["path"])
        if frame["score"].isna().all():
            continue
        k = np.rint(frame["score"].to_numpy() * model["num_new"]).astype(int)
        counts = np.bincount(k, minlength=int(model["num_new"]) + 1)
        for value, count in enumerate(counts):
            rows.append(
                {
                    "size": model["size"],
                    "params": int(model["params"]),
                    "seed": model["seed"],
                    "score": value / model["num_new"],
                    "fraction": count / len(k),
                }
            )
    if not rows:
        return pd.DataFrame(columns=["size", "params", "score", "n_seeds", "fraction_mean"])
    frame = pd.DataFrame(rows)
    table = stats.over_seeds(frame, ["params", "size", "score"], ["fraction"])
    return table.sort_values(["params", "score"], kind="stable", ignore_index=True)


def by_duplicates(models: pd.DataFrame) -> pd.DataFrame:
    """Per size at its last checkpoint, per training-data occurrence count of a sequence (the store's
    ``dup_counts``): sequences and memorized fraction, mean and 95% t interval over seeds."""
    from memdyn.data.store import ExampleStore

    rows = []
    for _, model in models[models["final"]].iterrows():
        store = ExampleStore(os.path.join(model["workdir"], "data", "train"))
        if store.dup_counts is None:
            continue
        counts = pd.Series(np.asarray(store.dup_counts), index=np.asarray(store.example_ids))
        frame = _read(model["path"])
        frame["occurrences"] = counts.reindex(frame.index).to_numpy()
        for occurrences, part in frame.groupby("occurrences"):
            rows.append(
                {
                    "size": model["size"],
                    "params": int(model["params"]),
                    "seed": model["seed"],
                    "occurrences": int(occurrences),
                    "n_sequences": len(part),
                    "memorized_fraction": float(part["memorized"].mean()),
                }
            )
    if not rows:
        return pd.DataFrame(columns=["size", "params", "occurrences", "n_seeds", "memorized_fraction_mean"])
    table = stats.over_seeds(
        pd.DataFrame(rows), ["params", "size", "occurrences"], ["memorized_fraction", "n_sequences"]
    )
    return table.sort_values(["params", "occurrences"], kind="stable", ignore_index=True)


def analyze_runs(workdirs: list[str], out_dir: str, replicates: int = BOOTSTRAP) -> dict[str, pd.DataFrame]:
    """Every table of the module docstring, written into ``out_dir`` with ``predict_tables.md`` and
    ``predict.png``; returns them by name."""
    models = load_models(workdirs)
    pairs, predictors = pairs_and_bootstrap(models, replicates)
    if predictors.empty:
        raise ValueError(
            "every seed has a single scored checkpoint: nothing predicts anything (score more "
            "checkpoints or sizes with `memdyn extract`)"
        )
    result = {
        "models": models.drop(columns=["path", "workdir"]),
        "pairs": pairs,
        "predictors": predictors,
        "equicompute": equicompute(predictors),
        "memorized": memorized_fractions(models),
        "scores": score_distribution(models),
        "duplicates": by_duplicates(models),
    }
    write_csvs(out_dir, "predict", result)
    runs.atomic_write_text(os.path.join(out_dir, "predict_tables.md"), markdown(result) + "\n")
    runs.atomic_write(os.path.join(out_dir, "predict.png"), lambda tmp: _plot(result, tmp))
    return result


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


def _plot(result: dict[str, pd.DataFrame], png_path: str) -> None:
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
