"""Runs Tirumala et al.'s forgetting protocols at CPU scale and analyzes them, in one command:

    python launch/forgetting.py --out=runs/forgetting [--sizes=nano,micro,tiny] [--epochs_after=10]

1. baseline across sizes: each size's parent trains 8 epochs; a fork inserts the special set once at epoch 8
   and trains ``epochs_after`` more epochs;
2. insertion epoch: forks of the tiny parent at epochs 4, 8 and 12;
3. repeated insertion: the special set trained 5 times in a row at epoch 8;
4. spaced repetition: inserted at epochs 8, 9, 10, 11.
Each fork's M on the special set is evaluated every 5 steps; `memdyn analyze forgetting` (called at the end)
writes forgetting_curves.csv, forgetting_summary.csv and forgetting.png into --out, and RESULTS.md with the
tables. Runs already complete are skipped, interrupted ones resume.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memdyn import config as config_lib, lifecycle, logs, runs as runs_lib  # noqa: E402
from memdyn.analysis import forgetting  # noqa: E402
from memdyn.analysis.tables import to_markdown  # noqa: E402
from memdyn.data import build  # noqa: E402
from memdyn.data.order import StepOrder  # noqa: E402

CONFIG = os.path.join(config_lib.CONFIG_DIR, "forgetting.py")


def _config(size: str, **fields):
    return config_lib.apply_overrides(config_lib.load_config_file(CONFIG, size), fields)


def steps_per_epoch() -> int:
    c = _config("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        data = build.prepare(c, tmp)
        return StepOrder(data.train.num_examples, c.batch_size, c.seed).steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/forgetting")
    parser.add_argument("--sizes", default="nano,micro,tiny")
    parser.add_argument("--epochs_after", type=int, default=10)
    args = parser.parse_args()
    logs.configure()
    epoch = steps_per_epoch()
    after = args.epochs_after * epoch
    sizes = args.sizes.split(",")
    parents, forks = os.path.join(args.out, "parents"), os.path.join(args.out, "forks")

    fork_points = {size: [8 * epoch] for size in sizes}
    fork_points["tiny"] = [4 * epoch, 8 * epoch, 12 * epoch]
    for size in sizes:
        points = fork_points[size]
        lifecycle.train(_config(size, num_steps=max(points), **{"checkpoint.keep_steps": tuple(points)}),
                    os.path.join(parents, size))

    runs = {f"size_{size}": (size, 8 * epoch, {}) for size in sizes}
    if "tiny" in sizes:
        runs.update({
            "epoch04_tiny": ("tiny", 4 * epoch, {}),
            "epoch12_tiny": ("tiny", 12 * epoch, {}),
            "repeat5_tiny": ("tiny", 8 * epoch, {"insert.repeats": 5}),
            "spaced4_tiny": ("tiny", 8 * epoch, {"insert.every": epoch, "insert.times": 4}),
        })
    for name, (size, at, extra) in runs.items():
        fields = {"num_steps": at + after, "insert.at_step": at, "init_from": f"{os.path.join(parents, size)}@{at}",
                  **extra}
        if extra.get("insert.times"):  # spaced: follow the decay for the same time after the last insertion
            fields["num_steps"] += (extra["insert.times"] - 1) * extra["insert.every"]
        lifecycle.train(_config(size, **fields), os.path.join(forks, name))

    _, summary = forgetting.analyze_runs([r.workdir for r in runs_lib.find_runs(forks)], out_dir=args.out)
    columns = ["run", "size", "params", "insert_step", "num_insertions", "m_before", "m_after", "baseline_min",
               "excess_before", "excess_after", "excess_asymptote", "excess_asymptote_se", "excess_tau",
               "retained_min", "retained_asymptote"]
    table = to_markdown(summary[columns])
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(f"steps per epoch: {epoch}; each fork trains {args.epochs_after} epochs after its (last) "
                f"insertion\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
