"""Runs the predictable-memorization experiment (configs/predict.py): sizes x seeds, k-extractability of every
training sequence at every kept checkpoint, then the analysis:

    python launch/predict.py --out=runs/predict [--sizes=nano,micro,tiny,small] [--seeds=0,1,2] [--parallel=2]
        [--num_steps=720]

Runs are ``<out>/model.size=<size>,seed=<s>`` (a ``memdyn sweep``; complete runs are skipped, interrupted ones
resume). Each kept checkpoint S of each run is scored with ``memdyn extract --set=train --step=S --score`` into
``<run>/extract/train-<S>.csv`` (skipped when complete, resumed when interrupted). ``--num_steps`` shortens the
runs and keeps checkpoints at the same fractions of training. ``memdyn analyze predict`` is called at the end.
"""

from __future__ import annotations

import argparse
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "memdyn")):  # `python launch/<study>.py` in a checkout
    sys.path.insert(0, _CHECKOUT)

from memdyn import config as config_lib  # noqa: E402
from memdyn import sweeps
from memdyn.cli import logs
from memdyn.cli.main import quiet_tensorflow
from memdyn.extraction import extract_job
from memdyn.rundir import runs as runs_lib
from memdyn.studies.predict import analysis as analysis  # noqa: E402

CONFIG = os.path.join(config_lib.CONFIG_DIR, "predict.py")


def kept_steps(num_steps: int, default_steps: int, default_kept: tuple[int, ...]) -> tuple[int, ...]:
    """The default checkpoints' fractions of training, applied to ``num_steps``."""
    return tuple(sorted({max(1, round(num_steps * s / default_steps)) for s in default_kept}))


def main() -> None:
    quiet_tensorflow()  # as the memdyn command does: before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/predict")
    parser.add_argument("--sizes", default="nano,micro,tiny,small")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once (processes)")
    parser.add_argument("--num_steps", type=int, default=None, help="run length (checkpoints at the same fractions)")
    args = parser.parse_args()
    logs.configure()
    default = config_lib.load_config_file(CONFIG)
    overrides = {}
    if args.num_steps is not None:
        if args.num_steps < 1:
            parser.error(f"--num_steps={args.num_steps} must be positive")
        overrides = {
            "num_steps": args.num_steps,
            "checkpoint.keep_steps": kept_steps(
                args.num_steps, default.num_steps, tuple(default.checkpoint.keep_steps)
            ),
        }
    sweeps.run_sweep(
        CONFIG, None, args.out, [f"model.size={args.sizes}", f"seed={args.seeds}"], overrides, parallel=args.parallel
    )
    for run in runs_lib.find_runs(args.out):
        config = runs_lib.read_config(run.workdir)
        for step in config["checkpoint"]["keep_steps"]:
            totals = extract_job.run_extract(run.workdir, step, set_name="train", score=True)
            print(
                f"{runs_lib.run_name(run.workdir)} step {step}: {totals['memorized_fraction']:.4f} memorized of "
                f"{totals['scored']}"
            )
    analysis.analyze_runs([r.workdir for r in runs_lib.find_runs(args.out)], out_dir=args.out)
    print(open(os.path.join(args.out, "predict_tables.md")).read())


if __name__ == "__main__":
    main()
