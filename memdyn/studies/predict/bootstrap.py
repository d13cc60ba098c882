"""Precision and recall of each predictor for its seed's target, and their means over seeds with two-level
bootstrap intervals (seeds resampled, each drawn seed's sequences reweighted with Poisson(1) weights; see
``analysis``'s docstring); the equal-compute view."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from memdyn.studies.predict.extracts import FAMILIES, family_of, read_extract, target_of

BOOTSTRAP = 2000


def pairs_and_bootstrap(models: pd.DataFrame, replicates: int = BOOTSTRAP, seed: int = 0):
    """Per seed and predictor: counts, precision, recall (``pairs``); and per predictor (size, step) the mean over
    seeds with two-level bootstrap intervals (``predictors``)."""
    rng = np.random.default_rng(seed)
    pair_rows, per_seed = [], {}
    for seed_value, seed_models in models.groupby("seed", sort=True):
        target = target_of(seed_models)
        truth = read_extract(target["path"])
        tgt_N = truth["memorized"].to_numpy()
        # One Poisson(1) weight vector per (replicate, seed slot): a seed drawn twice in a replicate gets two
        # independent resamples of its sequences.
        slots = models["seed"].nunique()
        weights_RxJxN = rng.poisson(1.0, size=(replicates, slots, len(truth))).astype(np.float64)
        n_target_RxJ = weights_RxJxN @ tgt_N
        for _, model in seed_models.iterrows():
            if model["run"] == target["run"] and model["step"] == target["step"]:
                continue
            frame = read_extract(model["path"])
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
                "family": family_of(model, target),
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
