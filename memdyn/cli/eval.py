"""``memdyn eval``: evaluate a set of a run (and its k-extractability) at a checkpoint."""

from __future__ import annotations

from memdyn.cli.command import Args, Command, Flag, Usage

PROMPT_LEN = Flag("prompt_len", int, 32, "k-extractability: prompt tokens M.")
NUM_NEW = Flag("num_new", int, 32, "k-extractability: greedy tokens N scored.")

FLAGS = (
    Flag("workdir", str, None, "Directory of the run.", required=True),
    Flag("set", str, None, "The set to evaluate: a tracked set (validation, special, ...) or `train`.", required=True),
    Flag("step", int, None, "The checkpoint (training step) to evaluate; default: the latest."),
    Flag("extract", bool, False, "Also k-extractability (causal LMs)."),
    PROMPT_LEN,
    NUM_NEW,
    Flag(
        "memsinks_mode",
        str,
        "train",
        "A MemSinks run's MLP gates (train: each sequence's own mask; all: pool x p_mem; dropout: sinks dropped; "
        "exclude: --exclude_set's units off).",
        choices=("train", "all", "dropout", "exclude"),
    ),
    Flag(
        "exclude_set",
        str,
        None,
        "--memsinks_mode=exclude: the set whose sequences' sink units are switched off.",
    ),
    Flag("exclude_count", int, None, "--memsinks_mode=exclude: only the first n sequences of --exclude_set."),
)

USAGES = (
    Usage(
        "memdyn eval --workdir=<dir> --set=<name> [--step=<S>] [--extract [--prompt_len=32 --num_new=32]] "
        "[--memsinks_mode=train|all|dropout|exclude [--exclude_set=<set> --exclude_count=<n>]]",
        "Evaluate a set (validation, special, train, ...) at checkpoint S (default: the latest): per-example M(f) "
        "and loss in evals/<set>-<S>.csv; with --extract Biderman's k-extractability per example "
        "(example_id,score,memorized,prefix_match,loss) in evals/<set>-<S>-extract.csv.",
    ),
)


def run(args: Args) -> None:
    from memdyn.extraction import eval_checkpoint

    aggregates = eval_checkpoint.evaluate_checkpoint(
        args.workdir,
        args.set,
        args.step,
        extract_k=args.extract,
        prompt_len=args.prompt_len,
        num_new=args.num_new,
        memsinks_mode=args.memsinks_mode,
        exclude_set=args.exclude_set,
        exclude_count=args.exclude_count,
    )
    print("\n".join(f"{k}: {v}" for k, v in aggregates.items()))


COMMAND = Command("eval", "evaluate a set (and its k-extractability) at a checkpoint", USAGES, FLAGS, run)
