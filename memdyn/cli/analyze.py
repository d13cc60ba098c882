"""``memdyn analyze <name>``: one study's analysis of finished runs, with CIs over seeds.

The analyses are the registry of ``memdyn.studies`` (each study's ``analysis.py`` registers its summary and
outputs); this module declares the command-line flags each one reads: the runs (``--workdir`` or ``--sweep``),
``--out``, and the few options of ``memdyn.studies.Options`` an analysis uses. An analysis not listed in
``OPTION_FLAGS`` takes the common flags only.
"""

from __future__ import annotations

import functools

from memdyn.cli.command import Args, Command, Flag, Usage, UsageError

COMMON_FLAGS = (
    Flag("workdir", str, None, "Directory of one run to analyze (or --sweep)."),
    Flag(
        "sweep",
        str,
        [],
        "Directory of a sweep whose runs to analyze (or --workdir); more than once to read the runs of several "
        "sweeps together (output in the first).",
        repeatable=True,
    ),
    Flag("out", str, None, "The output directory; default: --workdir, or the first --sweep."),
)


def _taus(default: str) -> tuple[Flag, str]:
    return Flag(
        "taus", list, None, f"The thresholds tau of T(N, tau), comma-separated, in (0, 1]; default {default}."
    ), default


# The flags of ``memdyn.studies.Options`` each analysis reads, each with the value its usage line shows; an option
# an analysis does not declare keeps its default (OPTION_DEFAULTS).
OPTION_FLAGS: dict[str, tuple[tuple[Flag, str], ...]] = {
    "memorization": (
        (
            Flag(
                "m_from",
                str,
                "auto",
                "M(f) from whole-training-set evaluations at epoch ends (train_eval), from the per-example records "
                "of the train steps (in_step), or the first when the run has them (auto).",
                choices=("auto", "train_eval", "in_step"),
            ),
            "auto|train_eval|in_step",
        ),
        _taus("0.5,0.7,0.9"),
    ),
    "learning_rate": (_taus("0.3,0.5,0.7,0.9"),),
    "unique_ids": (_taus("0.5,0.7,0.9"),),
    "forgetting": (
        (Flag("set", str, None, "The inserted set whose forgetting to measure; default special."), "special"),
    ),
}
OPTION_DEFAULTS = {"set": None, "m_from": "auto", "taus": None}
_USAGE = "memdyn analyze {name} (--workdir=<dir> | --sweep=<dir> ...) [--out=<dir>]"


def analysis_commands() -> dict[str, Command]:
    """``memdyn analyze <name>`` for every registered analysis (imports the studies' analysis modules)."""
    from memdyn import studies

    commands = {}
    for name, analysis in studies.analyses().items():
        options = OPTION_FLAGS.get(name, ())
        line = " ".join([_USAGE.format(name=name), *(f"[--{flag.name}={shown}]" for flag, shown in options)])
        text = f"{analysis.help[:1].upper()}{analysis.help[1:]}: {analysis.outputs}."
        commands[name] = Command(
            f"analyze {name}",
            analysis.help,
            (Usage(line, text),),
            COMMON_FLAGS + tuple(flag for flag, _ in options),
            functools.partial(run, analysis),
        )
    return commands


def parse_taus(values: list[str] | None) -> tuple[float, ...] | None:
    if not values:
        return None
    try:
        taus = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--taus={','.join(values)}: expected comma-separated numbers in (0, 1]") from None
    if not all(0 < t <= 1 for t in taus):
        raise ValueError(f"--taus={','.join(values)}: every tau must be in (0, 1]")
    return taus


def run(analysis, args: Args) -> None:
    if bool(args.workdir) == bool(args.sweep):
        raise UsageError(f"`memdyn {args.command}` needs --workdir or --sweep=<dir> (repeatable), not both")
    from memdyn import studies
    from memdyn.rundir import runs

    if args.workdir:
        runs.load_config(args.workdir)  # a clear error when it holds no run
    workdirs = [args.workdir] if args.workdir else [r.workdir for d in args.sweep for r in runs.require_runs(d)]
    out = args.out or args.workdir or args.sweep[0]
    option = {name: getattr(args, name, default) for name, default in OPTION_DEFAULTS.items()}
    options = studies.Options(
        workdirs, out, set_name=option["set"], m_from=option["m_from"], taus=parse_taus(option["taus"])
    )
    before = _files(out)
    summary = analysis.run(options)
    print(summary.to_string(index=False))
    after = _files(out)
    written = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    print(f"wrote {', '.join(written) or 'nothing'} in {out}")


def _files(directory: str) -> dict[str, tuple[int, int, int]]:
    """The files directly in ``directory``, each with what changes when it is written (inode, mtime, size): an
    analysis's outputs are written whole (replaced atomically or rewritten)."""
    import os

    if not os.path.isdir(directory):
        return {}
    stamps = {}
    for entry in os.scandir(directory):
        if entry.is_file():
            st = entry.stat()
            stamps[entry.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return stamps


COMMAND = Command(
    "analyze",
    "memorization, learning_rate, unique_ids, forgetting, memsinks, pos or predict analyses, with CIs over seeds",
    (
        Usage(
            _USAGE.format(name="<name>") + " [the analysis's flags]",
            "Run the analysis <name> over the runs of a workdir or of sweeps, writing its CSV, Markdown and PNG "
            "files into --out; `memdyn analyze <name> --help` lists its flags.",
        ),
    ),
    COMMON_FLAGS,
    None,
    subcommands=analysis_commands,
)
