"""The ``memdyn`` command line: ``memdyn <command> [flags]``.

Each command is a module of this package that declares it (``memdyn.cli.command``: summary, usage lines, flags);
this one finds the command a command line names, prints help from the declarations, parses the command's flags,
runs it, and turns its errors into exit statuses: 2 for bad input (a flag, a config value, a file: one line, no
traceback unless MEMDYN_TRACEBACK is set), 143 after a preemption's checkpoint (as a process ended by SIGTERM).
``python -m memdyn.cli.reference`` renders the same declarations as docs/reference/cli.md.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

from memdyn.cli.command import Command, UsageError, parse, positionals, render_help

# `memdyn --help` lists them in this order; each is the COMMAND of memdyn.cli.<module>
MODULES = ("train", "eval", "extract", "import_hf", "rows", "sweep", "export", "analyze", "vocab")
COMMANDS = tuple(module.replace("_", "-") for module in MODULES)
HELP = {"--help", "-h", "--helpshort", "--helpfull"}


def commands() -> dict[str, Command]:
    return {name: importlib.import_module(f"memdyn.cli.{m}").COMMAND for name, m in zip(COMMANDS, MODULES)}


def _booleans() -> set[str]:
    """Every command's boolean flags: ``--no<flag>`` names one of them, to refuse by its name."""
    return {f.name for command in commands().values() for f in command.flags if f.type is bool}


def select(argv: list[str], for_help: bool = False) -> tuple[Command, list[str]]:
    """The command a command line (without the program name) names, a subcommand (``sweep status``, ``analyze
    <name>``) included, and the arguments left for its flags. ``for_help``: a group without its subcommand is
    the group (``memdyn analyze --help``)."""
    named = next((i for i, arg in enumerate(argv) if arg in COMMANDS), None)
    if argv and argv[0].startswith("-") and named is not None:  # flags before the command: `memdyn --workdir=x rows`
        argv = [argv[named], *argv[:named], *argv[named + 1 :]]
    if not argv or argv[0] not in COMMANDS:
        raise UsageError(
            f"usage: memdyn <{'|'.join(COMMANDS)}> [flags]; got {argv!r}. `memdyn --help` lists the commands, "
            "`memdyn <command> --help` a command's flags."
        )
    command, args = commands()[argv[0]], list(argv[1:])
    if command.subcommands is None:
        return command, args
    subcommands = command.subcommands()
    flags = {f.name: f for c in (command, *subcommands.values()) for f in c.flags}
    first = next(iter(positionals(args, flags)), None)
    name = None if first is None else args[first]
    if name in subcommands:
        return subcommands[name], args[:first] + args[first + 1 :]
    if command.run is None and not (for_help and name is None):
        raise UsageError(f"`memdyn {command.name}` needs one of {tuple(subcommands)}; got {name!r}")
    return command, args


def help_text(argv: list[str]) -> str | None:
    """What ``--help`` or ``--version`` (or no command at all) asks for; None when a command should run."""
    from memdyn import __version__

    if "--version" in argv:
        return f"memdyn {__version__}"
    asked = HELP & set(argv)
    if not argv or (asked and argv[0].startswith("-")):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {command.summary}" for name, command in commands().items()]
        return (
            "usage: memdyn <command> [flags]   (memdyn <command> --help for a command's flags)\n\n"
            "commands:\n" + "\n".join(lines)
        )
    if not asked:
        return None
    command, _ = select([a for a in argv if a not in HELP], for_help=True)
    text = render_help(command)
    if command.subcommands is not None:
        text += f"\n\nsubcommands (`memdyn {command.name} <subcommand> --help` for one's flags):\n"
        for sub in command.subcommands().values():
            for usage in sub.usages:
                text += "\n" + "\n".join(textwrap.wrap(usage.line, 116, initial_indent="  ", subsequent_indent=" " * 9))
                text += "\n" + "\n".join(
                    textwrap.wrap(usage.text, 116, initial_indent=" " * 6, subsequent_indent=" " * 6)
                )
    return text


def _fail(command: str | None, error: Exception, status: int) -> None:
    print(f"memdyn{' ' + command if command else ''}: error: {error}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str]) -> None:
    """Runs ``memdyn <argv>``: parses the named command's flags and runs it."""
    from memdyn.cli import logs

    try:
        command, args = select(argv)
        parsed, rest = parse(command, args, _booleans())
        if rest:
            subcommands = list(command.subcommands()) if command.subcommands else []
            hint = f"its subcommands: {', '.join(subcommands)}" if subcommands else "it takes no positional arguments"
            raise UsageError(f"unexpected arguments {rest!r} to `memdyn {command.name}` ({hint})")
    except UsageError as e:  # nothing ran: the message names the command
        _fail(None, e, 2)
    logs.configure()
    try:
        command.run(parsed)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # Bad input (a flag, a config value, a file): say what, without a traceback.
        if os.environ.get("MEMDYN_TRACEBACK") and not isinstance(e, UsageError):
            raise
        _fail(command.name, e, 2)
    except Exception as e:
        from memdyn.train.loop import Preempted

        if not isinstance(e, Preempted):
            raise
        # SIGTERM: the checkpoint is saved; say so in one line and exit as a terminated process does (128 + 15)
        print(f"memdyn {command.name}: {e}", file=sys.stderr)
        sys.exit(143)


def quiet_tensorflow() -> None:
    """TensorFlow (seqio, TFDS and clu import it) reads its C++ log level once, when it first logs: as it is
    imported, which a command may do. So the entry point sets it before any command runs: errors off too, which
    hides the "failed call to cuInit" line of every machine without CUDA. A level the caller set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run() -> None:
    """Console-script entry point (``memdyn``, ``python -m memdyn``)."""
    quiet_tensorflow()
    try:
        text = help_text(sys.argv[1:])
    except UsageError as e:
        _fail(None, e, 2)
    if text is not None:
        print(text)
        sys.exit(0)
    import faulthandler

    from absl import command_name, flags

    command_name.make_process_name_useful()  # `memdyn`, not `python`, in ps and top
    faulthandler.enable()  # a crash in native code prints the Python stack
    # absl's own flags (its logging's) keep their defaults: each command parses its own flags, in its own FlagValues
    flags.FLAGS.mark_as_parsed()
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
