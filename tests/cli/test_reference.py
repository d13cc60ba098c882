"""The commands' declarations hold together, and docs/reference/cli.md is their rendering, current."""

import os
import re

from conftest import REPO
from memdyn.cli import main, reference
from memdyn.cli.command import ConfigFile


def _every_command():
    for command in main.commands().values():
        yield command
        if command.subcommands:
            yield from command.subcommands().values()


def test_the_command_reference_is_current():
    path = os.path.join(REPO, "docs", "reference", "cli.md")
    current = open(path).read() if os.path.isfile(path) else ""
    assert current == reference.render_markdown(), (
        f"docs/reference/cli.md differs from the commands' declarations: regenerate it with `{reference.REGENERATE}`"
    )


def test_usage_lines_name_only_declared_flags_and_declarations_are_whole():
    for command in _every_command():
        names = [f.name for f in command.flags]
        assert len(names) == len(set(names)), command.name
        assert command.summary and command.usages, command.name
        assert command.run is not None or command.subcommands is not None, command.name
        for usage in command.usages:
            assert usage.line.startswith(f"memdyn {command.name.split()[0]} "), usage.line
            named = set(re.findall(r"--([a-z_]+)", re.sub(r"<[^>]*>", "", usage.line)))
            assert named <= set(names), (command.name, named - set(names))
        for flag in command.flags:
            assert flag.help.endswith("."), (command.name, flag.name)
            assert not flag.choices or flag.default in flag.choices, (command.name, flag.name)
            assert (flag.type is ConfigFile) == (flag.name == "config"), (command.name, flag.name)
    multi_host = {"distributed", "coordinator", "num_processes", "process_id"}
    assert [c.name for c in _every_command() if multi_host & {f.name for f in c.flags}] == ["train"]
