"""The command reference, docs/reference/cli.md, rendered from the commands' declarations (``memdyn.cli.command``).

Regenerate it after changing a command, a flag or an analysis's summary:

    python -m memdyn.cli.reference > docs/reference/cli.md

tests/cli/test_reference.py fails while the file differs from the rendering.
"""

from __future__ import annotations

from memdyn.cli import main
from memdyn.cli.command import Command

REGENERATE = "python -m memdyn.cli.reference > docs/reference/cli.md"


def _text(text: str) -> str:
    """Prose of the declarations as Markdown: placeholders like <dir> shown, not taken for HTML tags."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|") or "—"


def _anchor(name: str) -> str:
    return "memdyn-" + name.replace(" ", "-")


def _section(command: Command) -> list[str]:
    lines = [f"## memdyn {command.name}", "", _text(command.summary[:1].upper() + command.summary[1:]) + ".", ""]
    for usage in command.usages:
        lines += ["```text", usage.line, "```", "", _text(usage.text), ""]
    lines += ["| flag | type | default | |", "|---|---|---|---|"]
    for flag in command.flags:
        kind = flag.type_name() + (", required" if flag.required else "")
        default = f"`{flag.default_text()}`" if flag.default_text() else "—"
        lines.append(f"| `--{flag.name}` | {_cell(kind)} | {default} | {_cell(flag.help)} |")
    return lines + [""]


def render_markdown() -> str:
    """Every command, subcommand (``sweep status``, each ``analyze <name>``) and flag, as Markdown."""
    every = []
    for command in main.commands().values():
        every.append(command)
        every += list(command.subcommands().values()) if command.subcommands else []
    lines = [
        "# Command reference",
        "",
        "<!-- Generated from the declarations in memdyn/cli/ (and each study's registered analysis): do not edit; "
        f"run `{REGENERATE}`. -->",
        "",
        "`memdyn <command> [flags]`; `memdyn --help` lists the commands, `memdyn <command> --help` prints one's "
        "usage and flags, `memdyn --version` the version. A flag the command does not take is refused, naming the "
        "command's flags. Flags are written `--name=value` (or `--name value`); a boolean flag `--name` or "
        "`--noname`. Exit status: "
        + ", ".join(f"{status} {meaning}" for status, meaning in sorted(main.EXIT_STATUSES.items()))
        + ".",
        "",
    ]
    lines += [f"- [`memdyn {c.name}`](#{_anchor(c.name)}): {_text(c.summary)}" for c in every] + [""]
    for command in every:
        lines += _section(command)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
