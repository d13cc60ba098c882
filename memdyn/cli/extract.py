"""``memdyn extract``: k-extractability of every sequence of a source at a checkpoint."""

from __future__ import annotations

from memdyn.cli.command import Args, Command, Flag, Usage
from memdyn.cli.eval import NUM_NEW, PROMPT_LEN

FLAGS = (
    Flag("workdir", str, None, "Directory of the run (or of an imported model, `memdyn import-hf`).", required=True),
    Flag("step", int, None, "The checkpoint (training step) to score with; default: the latest."),
    Flag("set", str, None, "Source: a set of the run (train: every training sequence)."),
    Flag("tokens", str, None, "Source: a .npy integer array [sequences, length] to score."),
    Flag("indexed", str, None, "Source: GPT-NeoX indexed data, the path without .idx/.bin."),
    Flag("rows", str, None, "--indexed: sequences a:b (0-based, b excluded)."),
    Flag("steps", str, None, "--indexed: the rows of training steps a:b (--rows_per_step rows each)."),
    Flag("rows_per_step", int, 1024, "--steps: rows per step (Pythia: 1024)."),
    Flag("out", str, None, "The .csv or .parquet file to write; default: <workdir>/extract/<source>-<S>.csv."),
    Flag("score", bool, False, "Also Biderman's fractional score by greedy decoding."),
    PROMPT_LEN,
    NUM_NEW,
    Flag("batch_size", int, None, "Sequences per batch; default: the run's evaluation batch."),
)

USAGES = (
    Usage(
        "memdyn extract --workdir=<dir> [--step=<S>] (--set=<name> | --tokens=<file>.npy | --indexed=<prefix> "
        "(--rows=a:b | --steps=a:b [--rows_per_step=1024])) [--out=<file>.csv|.parquet] [--score] "
        "[--prompt_len=32 --num_new=32] [--batch_size=<n>]",
        "k-extractability of every sequence of a source at checkpoint S (default: the latest): a set of the run "
        "(train: every training sequence), an int array [sequences, length] in a .npy file, or GPT-NeoX indexed "
        "data (.idx/.bin; rows, or Pythia's 1024 rows per step). Per sequence: example_id, score (with --score: "
        "greedy decoding; else NaN), memorized, prefix_match, loss (one teacher-forced pass). Default --out: "
        "<workdir>/extract/<source>-<S>.csv. Written as it goes; run again with the same flags to resume.",
    ),
)


def run(args: Args) -> None:
    from memdyn.extraction import extract_job

    totals = extract_job.run_extract(
        args.workdir,
        args.step,
        out=args.out,
        set_name=args.set,
        tokens=args.tokens,
        indexed=args.indexed,
        rows=args.rows,
        steps=args.steps,
        rows_per_step=args.rows_per_step,
        prompt_len=args.prompt_len,
        num_new=args.num_new,
        score=args.score,
        batch_size=args.batch_size,
    )
    keys = ("out", "step", "scored", "left_out", "memorized_fraction", "mean_score", "mean_loss")
    print("\n".join(f"{k}: {totals[k]}" for k in keys))


COMMAND = Command(
    "extract",
    "k-extractability of every sequence of a set, a .npy array or GPT-NeoX indexed data",
    USAGES,
    FLAGS,
    run,
)
