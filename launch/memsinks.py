"""Runs the Memorization Sinks experiment (configs/memsinks.py) for every condition and seed, measures per-id
deletion in the MemSinks runs, then analyzes it:

    python launch/memsinks.py --out=runs/memsinks [--seeds=0,1,2] [--conditions=standard,memsinks,...]
        [--repeats=128] [--num_steps=300] [--parallel=3] [--deletions=1,4]

Each condition is a sweep over the seeds in ``<out>/<condition>/seed=<s>`` (``--parallel`` seeds at once, each a
``memdyn train`` process). ``--repeats`` sets how often each repeated sequence occurs per epoch (not for
``dedup``). In every MemSinks run the sink units of the first k repeated sequences (k in ``--deletions``) are
excluded at the last checkpoint (``memdyn eval --memsinks_mode=exclude``): ``deletion.csv`` holds the loss of
those k sequences, of the other repeated sequences and of validation data, and the fraction of the pool the k
ids cover, beside the same split of the same losses with the sinks kept (mode train), at p_mem (all) and dropped.
``memdyn analyze memsinks`` is
called at the end. Complete runs are skipped, interrupted ones resume.
"""

from __future__ import annotations

import argparse
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "memdyn")):  # `python launch/<study>.py` in a checkout
    sys.path.insert(0, _CHECKOUT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from memdyn import config as config_lib  # noqa: E402
from memdyn import sweeps
from memdyn.cli import logs
from memdyn.cli.main import quiet_tensorflow
from memdyn.extraction import eval_checkpoint
from memdyn.rundir import runs as runs_lib
from memdyn.studies.memsinks import analysis as analysis  # noqa: E402

CONFIG = os.path.join(config_lib.CONFIG_DIR, "memsinks.py")
CONDITIONS = ("standard", "memsinks", "shared", "dedup", "placebo")


def measure_deletion(workdir: str, counts: list[int]) -> pd.DataFrame:
    """For each k: the loss of the first k repeated sequences (``excluded``), of the other repeated sequences and
    of validation data with those k sequences' sink units excluded, and in the modes train (sinks kept), all and
    dropout (every sink dropped) for comparison; plus the fraction of the pool the k ids cover."""
    evaluated = {}

    def losses(mode: str, k: int = 0):
        key = (mode, k if mode == "exclude" else 0)
        if key not in evaluated:
            extra = dict(exclude_set="duplicates", exclude_count=k) if mode == "exclude" else {}
            repeated = eval_checkpoint.evaluate_checkpoint(workdir, "duplicates", memsinks_mode=mode, **extra)
            validation = eval_checkpoint.evaluate_checkpoint(workdir, "validation", memsinks_mode=mode, **extra)
            per_example = pd.read_csv(os.path.join(workdir, "evals", f"{repeated['set']}-{repeated['step']}.csv"))
            evaluated[key] = repeated, validation, per_example
        return evaluated[key]

    rows = []
    for k in counts:
        for mode in ("train", "all", "dropout", "exclude"):
            repeated, validation, per_example = losses(mode, k)
            excluded = np.arange(len(per_example)) < k  # the set's first k rows, in store order
            mean = lambda part: float(np.average(part["loss"], weights=part["num_tokens"]))  # noqa: E731
            rows.append(
                dict(
                    mode=mode,
                    excluded_ids=k,
                    step=repeated["step"],
                    pool_fraction_excluded=repeated.get("pool_fraction_excluded", 0.0),
                    excluded_loss=mean(per_example[excluded]),
                    other_repeated_loss=mean(per_example[~excluded]),
                    validation_loss=validation["loss"],
                )
            )
    return pd.DataFrame(rows)


def main() -> None:
    quiet_tensorflow()  # as the memdyn command does: before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/memsinks")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="occurrences of each repeated sequence per epoch "
        "(the run length stays config.num_steps unless --num_steps is given)",
    )
    parser.add_argument("--num_steps", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=3, help="seeds trained at once (processes)")
    parser.add_argument("--deletions", default="1,4", help="numbers of repeated sequences whose sinks are excluded")
    args = parser.parse_args()
    logs.configure()
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"--conditions: unknown {sorted(unknown)}; known: {CONDITIONS}")
    overrides = {} if args.num_steps is None else {"num_steps": args.num_steps}
    for condition in conditions:
        fields = dict(overrides)
        if args.repeats is not None and condition != "dedup":
            fields["data.tracked.duplicate_count"] = args.repeats
        sweeps.run_sweep(
            CONFIG, condition, os.path.join(args.out, condition), [f"seed={args.seeds}"], fields, parallel=args.parallel
        )
    counts = [int(k) for k in args.deletions.split(",") if k]
    for run in runs_lib.find_runs(args.out):
        config = runs_lib.read_config(run.workdir)
        path = os.path.join(run.workdir, "deletion.csv")
        if analysis.condition(config) == "memsinks" and counts and not os.path.isfile(path):
            frame = measure_deletion(run.workdir, counts)
            runs_lib.atomic_write(path, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    workdirs = [r.workdir for r in runs_lib.find_runs(args.out)]
    analysis.analyze_runs(workdirs, out_dir=args.out)
    print(open(os.path.join(args.out, "memsinks_conditions.md")).read())


if __name__ == "__main__":
    main()
