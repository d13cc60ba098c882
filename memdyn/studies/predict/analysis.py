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

The tables are computed in ``extracts`` (reading the extract files), ``bootstrap`` (precision, recall and their
intervals) and here (memorized fractions, scores, duplicates); ``report`` writes the markdown and the figure.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import Options, register, stats, write_csvs
from memdyn.studies.predict.bootstrap import BOOTSTRAP, equicompute, pairs_and_bootstrap
from memdyn.studies.predict.extracts import load_models, read_extract
from memdyn.studies.predict.report import markdown, plot


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


def memorized_fractions(models: pd.DataFrame) -> pd.DataFrame:
    """Per (size, step): memorized fraction and mean score, mean and 95% t interval over seeds."""
    rows = []
    for _, model in models.iterrows():
        frame = read_extract(model["path"])
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
        frame = read_extract(model["path"])
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
        frame = read_extract(model["path"])
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
    runs.atomic_write(os.path.join(out_dir, "predict.png"), lambda tmp: plot(result, tmp))
    return result
