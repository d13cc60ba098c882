"""What a memdyn command declares, and how its command line is read.

Every command module of ``memdyn.cli`` holds one ``Command``: its summary, usage lines and ``Flag`` declarations.
Those declarations are the only source of ``memdyn --help``, ``memdyn <command> --help``, the refusal of a flag the
command does not take, and the command reference (``memdyn.cli.reference``). A command's flags are defined, per
run, in a ``FlagValues`` of its own rather than absl's global one, so a command cannot read another's flag.
Importing this module imports no JAX, TensorFlow or config: parsing does, when a command runs.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable
from typing import Any


class ConfigFile:
    """The type of ``--config``: a config file ``<path>.py[:arg]`` or a packaged config ``<name>[:arg]``, with
    ``--config.<field>=<value>`` overrides (ml_collections' config flags)."""


TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", list: "list", ConfigFile: "config"}


class UsageError(Exception):
    """A command line memdyn cannot run: the command prints the message and exits with status 2."""


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    type: type  # str, int, bool, list (comma-separated strings) or ConfigFile
    default: Any
    help: str
    required: bool = False
    choices: tuple[str, ...] = ()  # an enum: the value must be one of these
    repeatable: bool = False  # given more than once, the values form a list; else once at most

    def __post_init__(self):
        if self.type not in TYPE_NAMES:
            raise TypeError(f"--{self.name}: type {self.type!r} is not one of {list(TYPE_NAMES)}")
        if self.repeatable and self.type is not str:
            raise TypeError(f"--{self.name}: only string flags repeat")

    def type_name(self) -> str:
        name = "one of " + "|".join(self.choices) if self.choices else TYPE_NAMES[self.type]
        return name + (", repeatable" if self.repeatable else "")

    def default_text(self) -> str:
        """The default as a user writes it; empty when the flag has none."""
        if self.default is None or self.default == []:
            return ""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return ",".join(map(str, self.default)) if isinstance(self.default, list | tuple) else str(self.default)


@dataclasses.dataclass(frozen=True)
class Usage:
    line: str  # how to call it: "memdyn eval --workdir=<dir> --set=<name> [--step=<S>] ..."
    text: str  # what that call does


@dataclasses.dataclass(frozen=True)
class Command:
    name: str  # as typed after `memdyn`: "eval", "sweep status", "analyze memsinks"
    summary: str  # one line for `memdyn --help`
    usages: tuple[Usage, ...]
    flags: tuple[Flag, ...]
    run: Callable[[Args], None] | None  # None: the command needs a subcommand (`memdyn analyze <name>`)
    # `memdyn sweep status`, `memdyn analyze <name>`: a function, as analyses register themselves when imported
    subcommands: Callable[[], dict[str, Command]] | None = None

    def flag(self, name: str) -> Flag | None:
        return next((f for f in self.flags if f.name == name), None)


CONFIG = Flag(
    "config",
    ConfigFile,
    "base",
    "Experiment config: a file <path>.py[:arg] or a packaged config by name (base, memorization, learning_rate, "
    "unique_ids, forgetting, memsinks, predict, masked_lm, text, tfds_synthetic, seqio_task)[:arg]; then "
    "--config.<field>=<value> overrides any of its fields.",
)


class Args:
    """A command's parsed flags: ``args.workdir``, ``args.given("nodes")`` (on the command line, even at its
    default), ``args.config_flag`` (the absl flag of ``--config``, for its file name and overrides)."""

    def __init__(self, command: str, values: dict[str, Any], given: set[str], config_flag=None):
        self.command, self._values, self._given, self.config_flag = command, values, given, config_flag

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"`memdyn {self.__dict__.get('command')}` declares no flag --{name}") from None

    def given(self, name: str) -> bool:
        return name in self._given


def flag_name(arg: str) -> str:
    """``--config.model.size=x`` -> ``config``; ``-workdir`` -> ``workdir`` (absl takes one dash, too)."""
    return arg.lstrip("-").split("=", 1)[0].split(".", 1)[0]


def _value_follows(arg: str, flag: Flag | None) -> bool:
    """Whether ``arg`` is the flag of a ``--flag value`` pair (absl then reads the next argument as its value)."""
    return flag is not None and flag.type is not bool and "=" not in arg and "." not in arg


def check_flags(command: Command, args: list[str], booleans: set[str] = frozenset()) -> None:
    """Refuses a flag ``command`` does not declare, naming it and the command's flags. ``booleans``: boolean flags
    of any command, so that ``--noextract`` to a command without ``--extract`` is refused as ``--extract``."""
    own = {f.name for f in command.flags}
    value_next = False
    for arg in args:
        if arg == "--":  # absl reads no flag after it
            return
        if value_next or not arg.startswith("-") or arg == "-":
            value_next = False
            continue
        name = flag_name(arg)
        if name not in own and name.startswith("no") and name[2:] in own | set(booleans):
            name = name[2:]
        if name not in own:
            raise UsageError(
                f"--{name} is not a flag of `memdyn {command.name}` (its flags: "
                f"{', '.join('--' + f for f in sorted(own))}; see `memdyn {command.name} --help`)"
            )
        value_next = _value_follows(arg, command.flag(name))


def positionals(args: list[str], flags: dict[str, Flag]) -> list[int]:
    """Indices of the arguments that are neither flags nor the values of ``--flag value`` pairs (``flags``: the
    flags that may appear, by name)."""
    out, value_next = [], False
    for i, arg in enumerate(args):
        if value_next:
            value_next = False
        elif arg.startswith("-") and arg not in ("-", "--"):
            value_next = _value_follows(arg, flags.get(flag_name(arg)))
        else:
            out.append(i)
    return out


def parse(command: Command, args: list[str], booleans: set[str] = frozenset()) -> tuple[Args, list[str]]:
    """The command's flags from ``args`` (the command line after the command's name); returns them and the
    positional arguments left. Raises UsageError for a flag the command does not take, a bad value, a flag given
    twice that does not repeat, or a required flag missing."""
    from absl import flags

    check_flags(command, args, booleans)
    args = packaged_configs(args) if command.flag("config") else list(args)
    values = flags.FlagValues()
    for flag in command.flags:
        _define(values, flag, ["memdyn", *args])
    try:
        rest = values(["memdyn", *args])[1:]
    except (AttributeError, KeyError) as error:  # --config=<file> given: the overrides are read as it is parsed
        raise UsageError(unknown_field_message(error, args)) from None
    except ImportError as error:  # a config file written before memdyn's modules moved
        from memdyn.config import moved_module_hint

        hint = moved_module_hint(error) if isinstance(error, ModuleNotFoundError) else None
        if hint is None and not str(error).startswith("config file "):  # load_config_file's, of a parent config
            raise
        given = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "")
        raise UsageError(f"--config={given}: " + (f"the config file {hint}" if hint else str(error))) from None
    except flags.Error as error:
        raise UsageError(str(error)) from None
    for flag in command.flags:
        if not flag.repeatable and values[flag.name].present > 1:
            raise UsageError(f"--{flag.name} is given {values[flag.name].present} times; it takes one value")
        if flag.required and values[flag.name].value in (None, []):
            raise UsageError(f"`memdyn {command.name}` needs --{flag.name}")
    given = {f.name for f in command.flags if values[f.name].present}
    config_flag = values["config"] if command.flag("config") else None
    if config_flag is not None:
        try:
            config_flag.value.keys()  # a file that failed to load is a stand-in that raises on any use
        except OSError as error:
            from ml_collections import config_flags

            from memdyn.config import CONFIG_DIR

            reason = str(error.__cause__ or error).strip().splitlines()[-1].strip()
            packaged = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
            raise UsageError(
                f"--config={config_flags.get_config_filename(config_flag)}: not a config file or a packaged "
                f"config ({reason}); the packaged configs: {', '.join(packaged)}"
            ) from None
    return Args(command.name, {f.name: values[f.name].value for f in command.flags}, given, config_flag), rest


def _define(values, flag: Flag, argv: list[str]) -> None:
    from absl import flags

    if flag.type is ConfigFile:
        from ml_collections import config_flags

        from memdyn.config import config_path

        try:  # without --config=<file> on the command line the default is read, with its overrides, right here
            config_flags.DEFINE_config_file(
                flag.name, config_path(flag.default), flag.help, flag_values=values, sys_argv=argv
            )
        except (AttributeError, KeyError) as error:
            raise UsageError(unknown_field_message(error, argv)) from None
        return
    define = {
        str: flags.DEFINE_multi_string if flag.repeatable else flags.DEFINE_string,
        int: flags.DEFINE_integer,
        bool: flags.DEFINE_bool,
        list: flags.DEFINE_list,
    }[flag.type]
    if flag.choices:
        define = flags.DEFINE_multi_enum if flag.repeatable else flags.DEFINE_enum
        define(flag.name, flag.default, list(flag.choices), flag.help, flag_values=values)
    else:
        define(flag.name, flag.default, flag.help, flag_values=values)


def packaged_configs(args: list[str]) -> list[str]:
    """``--config=<name>[:arg]`` (or ``--config <name>``) of a packaged config becomes its file's path."""
    from memdyn.config import config_path

    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


def unknown_field_message(error: Exception, argv: list[str]) -> str:
    """One line naming the mistyped ``--config.<field>`` (ml_collections raises with a did-you-mean hint)."""
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    key, _, hint = text.partition("\n")
    key = key.strip("'\"")
    flag = next(
        (a.split("=", 1)[0] for a in argv if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")),
        f"--config.…{key}",
    )
    return f"{flag}: unknown config field {key!r}" + (f" ({hint.strip()})" if hint else "")


def _wrap(text: str, indent: int, first: int | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        width=116,
        initial_indent=" " * (indent if first is None else first),
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def render_help(command: Command) -> str:
    """``memdyn <command> --help``: the usage lines, what each does, and every flag with its type and default."""
    lines = [f"usage of `memdyn {command.name}`:", ""]
    for usage in command.usages:
        lines += _wrap(usage.line, 9, first=2) + _wrap(usage.text, 6) + [""]
    lines.append("flags:")
    for flag in command.flags:
        notes = [flag.type_name()] + (["required"] if flag.required else [])
        notes += [f"default {flag.default_text()}"] if flag.default_text() else []
        lines += [f"  --{flag.name}  ({', '.join(notes)})", *_wrap(flag.help, 6)]
    return "\n".join(lines)
