"""Hand-made run directories for the memorization and learning-rate analysis tests (no JAX, no training): what a
run writes (train.csv, eval.csv, examples/ Parquet records, config.json), with numbers chosen to be worked out by
hand in the tests."""

import json
import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

IDENTITY = dict(size="nano", params=1000, causal=True, seed=0, peak_lr=1e-3, batch_size=2, seq_len=32)
SPE = 3  # 6 examples, batch 2

# (step, example_id, exact_match, num_tokens). In-step records of steps 0-2 estimate M_0 (each example scored
# before its first update): correct 0+5+5+0+20+10 = 40 of 100 tokens -> 0.4 (the unweighted mean would be 0.375);
# steps 3-5 estimate M_1: 5+10+15+10+20+15 = 75 -> 0.75; steps 6-8 M_2 = 0.95; step 9 starts the sweep of
# epoch 3, which stays incomplete (1.0 on its one step).
RECORDS = [
    (0, 0, 0.0, 10),
    (0, 1, 0.5, 10),
    (1, 2, 0.25, 20),
    (1, 3, 0.0, 20),
    (2, 4, 1.0, 20),
    (2, 5, 0.5, 20),
    (3, 1, 1.0, 10),
    (3, 0, 0.5, 10),
    (4, 3, 0.5, 20),
    (4, 2, 0.75, 20),
    (5, 5, 0.75, 20),
    (5, 4, 1.0, 20),
    (6, 0, 0.95, 10),
    (6, 1, 0.95, 10),
    (7, 2, 0.95, 20),
    (7, 3, 0.95, 20),
    (8, 4, 0.95, 20),
    (8, 5, 0.95, 20),
    (9, 0, 1.0, 10),
    (9, 1, 1.0, 10),
]
# Raw mem_update reaches 0.55 at step 2 (U = 3); the full 5-row rolling mean first does at step 6 (U = 7):
# rows 4..6 average 0.4, 0.5, 0.6.
MEM_UPDATE = [0.25, 0.25, 1.0, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 0.75]
# Validation perplexity falls, then rises at step 9 (epoch 3.0).
VALIDATION = [(0, 50.0), (3, 30.0), (6, 20.0), (9, 25.0)]


def write_run(
    workdir, records=RECORDS, mem_update=MEM_UPDATE, validation=VALIDATION, with_run=True, train_m=(), **identity
):
    """A run directory; ``train_m``: M of whole-training-set evaluations after epochs 0, 1, ... (none: the
    analysis falls back to the in-step records)."""
    identity = {**IDENTITY, **identity}
    os.makedirs(os.path.join(workdir, "examples"), exist_ok=True)
    steps = range(len(mem_update))
    train = pd.DataFrame(
        {
            "step": list(steps),
            "epoch": [s // SPE for s in steps],
            "epochs_done": [(s + 1) / SPE for s in steps],
            "mem_update": mem_update,
            "num_tokens": 40,
            "loss": 2.0,
        }
    )
    for key, value in identity.items():
        train[key] = value
    train["run"] = os.path.basename(workdir) if with_run else ""
    train.to_csv(os.path.join(workdir, "train.csv"), index=False)
    frame = pd.DataFrame(records, columns=["step", "example_id", "exact_match", "num_tokens"]).assign(loss=1.0)
    half = len(frame) // 2  # two Parquet parts, as the trainer writes them
    for i, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        first, last = int(part["step"].iloc[0]), int(part["step"].iloc[-1])
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False),
            os.path.join(workdir, "examples", f"part-{first:09d}-{last:09d}-{i:05d}.parquet"),
        )
    rows = [dict(step=s, set="validation", exact_match=0.1, loss=math.log(p), perplexity=p) for s, p in validation]
    rows += [dict(step=s, set="special", exact_match=0.1, loss=1.0, perplexity=10.0 + s) for s, _ in validation]
    rows += [
        dict(step=e * SPE, set="train", exact_match=m, loss=1.0, perplexity=3.0, num_tokens=100, num_examples=6)
        for e, m in enumerate(train_m)
    ]
    evals = pd.DataFrame(rows[::-1])  # out of order on purpose
    for key, value in identity.items():
        evals[key] = value
    evals.to_csv(os.path.join(workdir, "eval.csv"), index=False)
    config = {
        "batch_size": identity["batch_size"],
        "seed": identity["seed"],
        "data": {"seq_len": identity["seq_len"]},
        "model": {"size": identity["size"], "params": identity["params"], "causal": identity["causal"]},
        "optimizer": {"lr": identity["peak_lr"]},
    }
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    return str(workdir)
