"""Every command written in README.md and docs/ names what exists: a memdyn command and analysis, flags that
command takes, a config (packaged or a file) with every overridden field, of the right type; launcher and
benchmark modules with their flags; pip extras that setup.py declares. The commands' behaviour is tested
elsewhere; this catches the documentation drifting from the code."""

import ast
import glob
import os
import re
import shlex

import pytest

from conftest import REPO
from memdyn import config as config_lib

DOCUMENTS = [
    "README.md",
    *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)),
]


def _commands(document: str) -> list[str]:
    """Shell commands of the document's ```bash blocks: continuation lines joined, comments dropped, split at
    `&&`, `;` and `|`."""
    text = open(os.path.join(REPO, document)).read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            out += [part.strip() for part in re.split(r"&&|;|\|", line) if part.strip()]
    return out


ALL = [(doc, cmd) for doc in DOCUMENTS for cmd in _commands(doc)]


GUIDES = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "guides", "*.md")))


def test_the_documents_have_commands():
    # README.md opens with its two commands (install and train the default job; install and run the tests, CI's
    # command); the guides hold the rest, each with commands of its own.
    readme = [cmd for doc, cmd in ALL if doc == "README.md"]
    assert "memdyn train --workdir=runs/default" in readme and "python -m pytest tests -q" in readme
    first = open(os.path.join(REPO, "README.md")).read().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(first) == 2 and first[1].endswith("&& python -m pytest tests -q"), first  # CI runs that command
    assert sum(doc.startswith("docs/guides/") for doc, _ in ALL) >= 15
    assert GUIDES and {doc for doc, _ in ALL} >= {
        "README.md",
        *GUIDES,
        "docs/memorization/README.md",
        "docs/forgetting/README.md",
        "docs/memsinks/README.md",
    }


def test_the_documented_commands_work_from_any_directory():
    """A packaged config is named (``--config=memsinks:standard``), a launcher run as a module (``python -m
    memdyn.launch.<study>``): ``--config=configs/<name>.py`` and ``python launch/<study>.py`` work only from the
    repository's root. Prose may still name the files."""
    rooted = [
        f"{doc}: {cmd}" for doc, cmd in ALL if "--config=configs/" in cmd or re.match(r"python3? (\./)?launch/", cmd)
    ]
    assert rooted == [], "\n".join(rooted)


def _tokens(command: str) -> list[str]:
    """Optional parts ``[--flag=v]`` taken as given; ``...`` placeholders dropped."""
    tokens = [t[1:].removesuffix("]") if t.startswith("[") else t for t in shlex.split(command)]
    return [t for t in tokens if t and "..." not in t]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check_memdyn(tokens: list[str]) -> None:
    from memdyn import studies as analysis
    from memdyn.cli import command as command_lib
    from memdyn.cli import main

    assert tokens[1] in main.COMMANDS, tokens[1]
    if tokens[1] == "analyze":
        assert tokens[2] in analysis.analyses(), tokens[2]
    command, rest = main.select(tokens[1:])  # `sweep status` and `analyze <name>` are commands of their own
    args = [t for t in rest if t.startswith("-")]
    command_lib.check_flags(command, args)  # a flag the command does not declare raises, naming it
    own = {f.name for f in command.flags}
    config = None
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    if spec is not None or "config" in own:
        path, _, arg = config_lib.config_path(spec or "base").partition(":")
        path = path if os.path.isabs(path) else os.path.join(REPO, path)
        config = config_lib.load_config_file(path, arg or None)
    for a in args:
        name, _, value = a.lstrip("-").partition("=")
        if name.startswith("config."):
            config_lib.apply_overrides(config, {name[len("config.") :]: _value(value)})  # unknown field / type
        elif name == "sweep" and "=" in value and not os.path.isdir(value):
            field, values = value.split("=", 1)
            for v in values.split(","):
                config_lib.apply_overrides(config, {field: _value(v)})
        else:
            assert name in own or name.removeprefix("no") in own, f"--{name} is no flag of `memdyn {command.name}`"


def _check_module(module: str, args: list[str]) -> None:
    rel = module.replace(".", os.sep) + ".py"
    path = os.path.join(REPO, rel.replace(os.path.join("memdyn", "launch"), "launch", 1))
    assert os.path.isfile(path), module
    declared = set(re.findall(r"add_argument\(\s*\"--([a-z_]+)\"", open(path).read()))
    for a in args:
        if a.startswith("--"):
            assert a[2:].split("=", 1)[0] in declared, f"{module} has no flag {a}"


def _check_pip(tokens: list[str]) -> None:
    setup = open(os.path.join(REPO, "setup.py")).read()
    for t in tokens[2:]:
        extras = re.fullmatch(r"(?:-e )?\.\[([a-z0-9_,]+)\]", t)
        if extras:
            for extra in extras.group(1).split(","):
                assert f'"{extra}":' in setup, f"setup.py declares no extra {extra!r}"


@pytest.mark.parametrize("document,command", ALL, ids=[f"{d}:{c[:60]}" for d, c in ALL])
def test_documented_command_names_what_exists(document, command):
    tokens = _tokens(command)
    if tokens[0] == "memdyn":
        _check_memdyn(tokens)
    elif tokens[0] in ("python", "python3") and tokens[1] == "-m" and tokens[2] not in ("pytest", "venv"):
        _check_module(tokens[2], tokens[3:])
    elif tokens[0] in ("python", "python3") and tokens[1].endswith(".py"):
        _check_module(tokens[1][:-3].replace(os.sep, "."), tokens[2:])
    elif tokens[0] == "pip":
        _check_pip(tokens)
