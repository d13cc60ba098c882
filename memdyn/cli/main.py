"""The ``memdyn`` command line: ``memdyn <command> [flags]``.

Each command is a module of this package that declares it (``memdyn.cli.command``: summary, usage lines, flags);
this one finds the command a command line names, prints help from the declarations, parses the command's flags,
runs it, and turns its errors into exit statuses (``EXIT_STATUSES``): 2 for bad input (a flag, a config value, a
file: one line, no traceback unless MEMDYN_TRACEBACK is set); 1 for a failed run: an unexpected error keeps its
traceback (it may be a bug), a non-finite loss is one line; 143 after SIGTERM's checkpoint and 130 after Ctrl-C's
(SIGINT), as a process ended by the signal (128 + its number); 130 too when a second Ctrl-C stops without saving.
``python -m memdyn.cli.reference`` renders the same declarations as docs/reference/cli.md.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import textwrap

from memdyn.cli.command import Command, UsageError, parse, positionals, render_help

# `memdyn --help` lists them in this order; each is the COMMAND of memdyn.cli.<module>
MODULES = ("train", "eval", "extract", "import_hf", "rows", "sweep", "export", "analyze", "vocab")
COMMANDS = tuple(module.replace("_", "-") for module in MODULES)
HELP = {"--help", "-h", "--helpshort", "--helpfull"}
# What each exit status says (docs/reference/cli.md and the training guide list them)
EXIT_STATUSES = {
    0: "done",
    1: "a failed run (an unexpected error, with its traceback: it may be a bug; a NaN or infinite loss, in one line)",
    2: "bad input (a flag, a config value, a file; one line on stderr, no traceback unless `MEMDYN_TRACEBACK=1`)",
    130: "stopped by Ctrl-C (SIGINT) after saving a checkpoint (or at once, saving nothing, by a second Ctrl-C)",
    143: "stopped by SIGTERM after saving a checkpoint (SLURM requeues the run on it)",
}


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
    except FloatingPointError as e:  # a NaN or infinite loss: a failed run, whose message says where
        if os.environ.get("MEMDYN_TRACEBACK"):
            raise
        _fail(command.name, e, 1)
    except KeyboardInterrupt as e:  # a Ctrl-C that saved nothing: before the step loop, or a second one in it
        if os.environ.get("MEMDYN_TRACEBACK"):
            raise
        print(f"memdyn {command.name}: {str(e) or 'stopped by Ctrl-C'}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        from memdyn.train.loop import Preempted

        if not isinstance(e, Preempted):
            raise
        # SIGTERM or Ctrl-C: the checkpoint is saved; say so in one line and exit as a process ended by the signal
        # does (128 + 15 = 143, 128 + 2 = 130)
        print(f"memdyn {command.name}: {e}", file=sys.stderr)
        sys.exit(e.status)


# MEMDYN_VERBOSE=1: TensorFlow's start-up lines, its C++ logs at the level TensorFlow defaults to, and the INFO logs of
# the libraries memdyn uses are all shown
VERBOSE = "MEMDYN_VERBOSE"
# A line of absl's (or glog's) C++ logging: severity, date, time, thread, file:line
# (before absl is initialized its clock reads 00:00:<seconds since the epoch>)
_LOG_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s\]]+:\d+\] ")
_BEFORE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0")


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's start-up probing off a command's first screen (``MEMDYN_VERBOSE=1`` shows it).

    TensorFlow (seqio, TFDS and clu import it) logs through absl's C++ logging. Its level, ``TF_CPP_MIN_LOG_LEVEL``
    (1 hides INFO, 2 WARNING too, 3 ERROR too), is read by a static initializer of libtensorflow_framework.so that
    runs after other initializers of the same library have logged "oneDNN custom operations are on" and "Could not
    find cuda drivers"; absl, not yet initialized, writes those to stderr at any level, after "WARNING: All log
    messages before absl::InitializeLog() ...", and the profiler's extension (its own copy of absl) logs them again.
    No setting reaches those lines. So this sets the level (3 unless the caller set one: it also hides the "failed
    call to cuInit" of a machine without CUDA; the 1 that importing JAX sets where it finds none, as a launcher's
    imports do before its ``main`` runs, is not the caller's) and has the first import of TensorFlow, whenever a
    command makes it, run with stderr captured: the lines the level hides are dropped, the rest written back. The
    ``memdyn`` entry point and each launcher's ``main`` call this before anything imports TensorFlow; importing
    memdyn changes nothing."""
    if verbose():
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "1" and "jax" in sys.modules and _started_with_level() is None:
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]  # JAX's import sets 1 where it finds none: the caller set nothing
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:  # TensorFlow ignores a level it cannot read
        return
    pending = {name for name in _QuietImport.NAMES if name not in sys.modules}
    if level > 0 and pending and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport(level, pending))


def _started_with_level() -> str | None:
    """TF_CPP_MIN_LOG_LEVEL as the process started with it (/proc/self/environ; None where that cannot be read)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return None
    level = next((e.split(b"=", 1)[1] for e in entries if e.startswith(b"TF_CPP_MIN_LOG_LEVEL=")), None)
    return None if level is None else level.decode(errors="replace")


class _QuietImport:
    """A finder that has the first import of each of ``NAMES`` made by ``_QuietLoader``, then steps aside."""

    NAMES = ("tensorflow",)

    def __init__(self, level: int, pending: set[str]):
        self.level, self.pending = level, set(pending)

    def find_spec(self, name, path=None, target=None):
        if name not in self.pending:
            return None
        import importlib.util

        self.pending.discard(name)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # through the other finders
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader, self.level)
        return spec


class _QuietLoader:
    """Runs a module's loader with stderr captured, and writes back all but the log lines below ``level``."""

    def __init__(self, loader, level: int):
        self.loader, self.level = loader, level

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module's own loader, as if imported plainly
        with _stderr_without_logs_below(self.level):
            self.loader.exec_module(module)


def _hidden(line: str, level: int) -> bool:
    match = _LOG_LINE.match(line)
    return line.rstrip("\n") == _BEFORE_INIT or bool(match and "IWEF".index(match.group(1)) < level)


@contextlib.contextmanager
def _stderr_without_logs_below(level: int):
    """Captures file descriptor 2 (C++ writes to it directly) into a temporary file; on leaving, writes what it
    caught back to stderr, less absl's log lines below ``level`` (TF_CPP_MIN_LOG_LEVEL's scale)."""
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr to capture
        saved = None
    if saved is None:
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            caught = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in caught if not _hidden(line, level))
            if kept and sys.stderr is not None:
                sys.stderr.write(kept)
                sys.stderr.flush()


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
