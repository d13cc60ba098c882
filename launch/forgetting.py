"""Runs Tirumala et al.'s forgetting protocol at CPU scale with sham controls and seeds, then analyzes it:

    python launch/forgetting.py --out=runs/forgetting [--sizes=nano,micro,tiny] [--seeds=0,1,2]
        [--epochs_before=8] [--epochs_after=10] [--insert_epochs=8] [--no_repeats]

For every seed and size a parent trains ``epochs_before`` epochs. From its checkpoint two forks continue for
``epochs_after`` epochs on the same example order: one inserts the ``special`` set once (``size_<size>``), the
other is its sham control (``sham_<size>``: the same evaluations, no inserted updates). For the largest size
also: the set inserted 5 times in a row (``repeat5``), inserted at 4 consecutive epochs (``spaced4``), and with
``--insert_epochs=4,8,12`` insertions at other epochs, each with its own sham. M on the special set is evaluated
every 5 steps. ``memdyn analyze forgetting`` (called at the end) pairs every insertion with its sham and writes
forgetting_curves.csv, forgetting_summary.csv, forgetting_conditions.csv/.md and forgetting.png into --out.
Complete runs are skipped, interrupted ones resume; several launchers with different --seeds may share --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "memdyn")):  # `python launch/<study>.py` in a checkout
    sys.path.insert(0, _CHECKOUT)

from memdyn import config as config_lib  # noqa: E402
from memdyn.cli import logs
from memdyn.cli.main import quiet_tensorflow
from memdyn.data import build  # noqa: E402
from memdyn.data.order import StepOrder  # noqa: E402
from memdyn.rundir import runs as runs_lib
from memdyn.studies.forgetting import analysis as forgetting  # noqa: E402

CONFIG = os.path.join(config_lib.CONFIG_DIR, "forgetting.py")
SPACED_TIMES = 4
REPEATS = 5


def _config(size: str, **fields):
    return config_lib.apply_overrides(config_lib.load_config_file(CONFIG, size), fields)


def steps_per_epoch() -> int:
    c = _config("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        data = build.prepare(c, tmp)
        return StepOrder(data.train.num_examples, c.batch_size, c.seed).steps_per_epoch


def plan(
    sizes: list[str], seed: int, epoch: int, before: int, after: int, insert_epochs: list[int], repeats: bool
) -> tuple[dict, dict]:
    """(parents: size -> (num_steps, keep_steps), forks: name -> (size, fork step, config fields))."""
    largest = sizes[-1]
    points = {size: [before * epoch] for size in sizes}
    points[largest] = sorted(set(points[largest] + [e * epoch for e in insert_epochs]))
    parents = {size: (max(p), tuple(p)) for size, p in points.items()}
    forks = {}

    def add(name: str, size: str, at: int, extra: dict, length: int):
        forks[name] = (size, at, {"seed": seed, "num_steps": at + length, "insert.at_step": at, **extra})

    for size in sizes:
        at = before * epoch
        add(f"size_{size}", size, at, {}, after * epoch)
        sham = {"insert.sham": True}
        if repeats and size == largest:  # one sham for all three conditions: it evaluates at every spaced step
            sham.update({"insert.every": epoch, "insert.times": SPACED_TIMES})
        add(f"sham_{size}", size, at, sham, after * epoch + (SPACED_TIMES - 1) * epoch * (len(sham) > 1))
    if repeats:
        at = before * epoch
        add(f"repeat{REPEATS}_{largest}", largest, at, {"insert.repeats": REPEATS}, after * epoch)
        add(
            f"spaced{SPACED_TIMES}_{largest}",
            largest,
            at,
            {"insert.every": epoch, "insert.times": SPACED_TIMES},
            after * epoch + (SPACED_TIMES - 1) * epoch,
        )
    for e in insert_epochs:
        if e != before:
            add(f"epoch{e:02d}_{largest}", largest, e * epoch, {}, after * epoch)
            add(f"epoch{e:02d}_sham_{largest}", largest, e * epoch, {"insert.sham": True}, after * epoch)
    return parents, forks


def main() -> None:
    quiet_tensorflow()  # as the memdyn command does: before anything imports TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/forgetting")
    parser.add_argument("--sizes", default="nano,micro,tiny", help="ascending; the last gets the extra conditions")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs_before", type=int, default=8)
    parser.add_argument("--epochs_after", type=int, default=10)
    parser.add_argument("--insert_epochs", default="", help="extra insertion epochs for the largest size, e.g. 4,12")
    parser.add_argument("--no_repeats", action="store_true", help="skip the repeated and spaced conditions")
    args = parser.parse_args()
    logs.configure()
    from memdyn.train import job  # imports TensorFlow: after quiet_tensorflow

    epoch = steps_per_epoch()
    sizes = args.sizes.split(",")
    insert_epochs = [int(e) for e in args.insert_epochs.split(",") if e]
    for seed in [int(s) for s in args.seeds.split(",")]:
        parents, forks = plan(
            sizes, seed, epoch, args.epochs_before, args.epochs_after, insert_epochs, not args.no_repeats
        )
        parent_dir = lambda size, seed=seed: os.path.join(args.out, "parents", f"seed={seed}", size)
        for size, (num_steps, keep) in parents.items():
            job.train(
                _config(size, seed=seed, num_steps=num_steps, **{"checkpoint.keep_steps": keep}), parent_dir(size)
            )
        for name, (size, at, fields) in forks.items():
            job.train(
                _config(size, init_from=f"{parent_dir(size)}@{at}", **fields),
                os.path.join(args.out, "forks", f"seed={seed}", name),
            )

    workdirs = [r.workdir for r in runs_lib.find_runs(os.path.join(args.out, "forks"))]
    _, summary = forgetting.analyze_runs(workdirs, out_dir=args.out)
    print(open(os.path.join(args.out, "forgetting_conditions.md")).read())


if __name__ == "__main__":
    main()
