"""``memdyn rows``: the examples one step of a run trained, one per line."""

from __future__ import annotations

from memdyn.cli.command import Args, Command, Flag, Usage

FLAGS = (
    Flag("workdir", str, None, "Directory of the run.", required=True),
    Flag("step", int, None, "The training step (0-based update index).", required=True),
    Flag("text", bool, False, "Also print each example's decoded text."),
)

USAGES = (
    Usage(
        "memdyn rows --workdir=<dir> --step=<S> [--text]",
        "Print what step S trained, one example per line: `<kind>\\t<example_id>[\\t<text>]`, kind `train` for the "
        "step's batch and `insert:<set>:<repeat>` for inserted updates before it.",
    ),
)


def run(args: Args) -> None:
    import numpy as np

    from memdyn.data import run_data
    from memdyn.data.order import PADDING_ROW, StepOrder
    from memdyn.rundir import runs
    from memdyn.train import insertion

    config = runs.load_config(args.workdir)
    step = args.step
    if not 0 <= step < config.num_steps:
        raise ValueError(f"--step={step} is outside the run's steps [0, {config.num_steps})")
    data = run_data.open_run_data(args.workdir, config)
    order = StepOrder(data.train.num_examples, config.batch_size, config.data.order_seed)
    batches = []
    if step in insertion.insertion_steps(config.insert, config.num_steps) and not config.insert.sham:
        inserted = data.sets[config.insert.set]
        batches += [
            (f"insert:{config.insert.set}:{r}", inserted.rows(np.arange(inserted.num_examples)))
            for r in range(config.insert.repeats)
        ]
    rows = order.rows(step)
    batches.append(("train", data.train.rows(rows[rows != PADDING_ROW])))
    for kind, rows in batches:
        for example_id, tokens in zip(rows["example_ids"], rows["tokens"]):
            text = f"\t{data.decode(tokens)}" if args.text else ""
            print(f"{kind}\t{example_id}{text}")


COMMAND = Command("rows", "print the examples a step trained", USAGES, FLAGS, run)
