"""The k-extractability files ``memdyn extract --set=train`` writes into each run (``<run>/extract/train-<step>.csv``
and its ``.json`` job): the scored (run, checkpoint)s, each seed's target and the predictors' families."""

from __future__ import annotations

import glob
import json
import os
import re

import pandas as pd

from memdyn.rundir import runs
from memdyn.studies import read_csv

FAMILIES = ("target checkpoint", "smaller, final", "smaller, intermediate")
_FILE = re.compile(r"train-(\d+)\.csv$")


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


def target_of(seed_models: pd.DataFrame) -> pd.Series:
    """The seed's target: the run with the most parameters, at its last scored checkpoint."""
    largest = seed_models[seed_models["params"] == seed_models["params"].max()]
    if largest["run"].nunique() > 1:
        raise ValueError(
            f"seed {largest['seed'].iloc[0]}: several runs have the most parameters "
            f"({sorted(largest['run'].unique())}); one target per seed"
        )
    return largest.sort_values("step").iloc[-1]


def family_of(model: pd.Series, target: pd.Series) -> str:
    """The predictor's family (one of ``FAMILIES``) for ``target``."""
    if model["run"] == target["run"]:
        return "target checkpoint"
    return "smaller, final" if model["final"] else "smaller, intermediate"


def read_extract(path: str) -> pd.DataFrame:
    """One extract file by ``example_id``, ``memorized`` as bool."""
    frame = read_csv(path).set_index("example_id").sort_index()
    frame["memorized"] = frame["memorized"].astype(bool)
    return frame
