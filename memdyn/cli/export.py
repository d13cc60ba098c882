"""``memdyn export``: tidy CSVs of a run or of a whole sweep."""

from __future__ import annotations

from memdyn.cli.command import Args, Command, Flag, Usage, UsageError

FLAGS = (
    Flag("workdir", str, None, "Directory of the run to export (or --sweep)."),
    Flag("sweep", str, None, "Directory of the sweep whose runs to export (or --workdir)."),
    Flag("out", str, None, "The output directory.", required=True),
)

USAGES = (
    Usage(
        "memdyn export (--workdir=<dir> | --sweep=<dir>) --out=<dir>",
        "Tidy CSVs (train, eval, insertions, examples, eval_examples) of a run, or of all the runs of a sweep "
        "concatenated with the swept fields as columns.",
    ),
)


def run(args: Args) -> None:
    if bool(args.workdir) == bool(args.sweep):
        raise UsageError("`memdyn export` needs exactly one of --workdir or --sweep=<dir>")
    from memdyn.rundir import export

    written = export.export_run(args.workdir, args.out) if args.workdir else export.export_sweep(args.sweep, args.out)
    print("\n".join(f"{name}: {path}" for name, path in written.items()))


COMMAND = Command("export", "tidy CSVs of a run or a whole sweep", USAGES, FLAGS, run)
