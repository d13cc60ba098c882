"""docs/reference/config.md from the code: every field of ``configs/base.py`` with its type, default, allowed values
and description.

    python -m memdyn.cli.config_reference > docs/reference/config.md

The fields are those of ``memdyn.configs.base.get_config()``; their descriptions are the comments beside their
assignments in ``configs/base.py``, read from its source:

- a field's description is the block of whole-line comments directly above its assignment (no blank line between)
  followed by the comments on the assignment's own lines (trailing comments). A whole-line block that sits between
  a statement with a trailing comment and a field with one of its own is ambiguous (the continuation of the one,
  or the start of the other) and refused: put the whole description above the field, or beside it;
- fields made in a loop over ``("name", type)`` tuples (``c.model[field] = ...``) take the comments on the tuple's
  lines;
- a group built from a mapping (``c.data.synthetic = config_dict.ConfigDict(CorpusConfig().__dict__)``) describes
  each of its keys in its comment block as a line ``#   key: text`` (three spaces after ``#``), continued by lines
  with five or more spaces after ``#``; the block's other lines describe the group;
- a group's own comment (``c.insert = config_dict.ConfigDict()``) becomes the text of its section.

A field without a description is an error (``check`` lists them), so the reference cannot silently miss one.
Allowed values come from the constants the config's validation checks against (``ALLOWED``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import io
import os
import re
import sys
import tokenize
from typing import Any

COMMAND = "python -m memdyn.cli.config_reference > docs/reference/config.md"
REFERENCE = os.path.join("docs", "reference", "config.md")

# field -> (module, constant): the values `memdyn.config.validate` (or the code that reads the field) accepts.
# A constant is read from the module's source when it is a literal (no import), else by importing the module.
ALLOWED: dict[str, tuple[str, str]] = {
    "model.size": ("memdyn.model.sizes", "PRESET_NAMES"),
    "model.mlm_scored": ("memdyn.train.objective", "SCORED"),
    "model.dtype": ("memdyn.config", "COMPUTE_DTYPES"),
    "model.attention": ("memdyn.config", "ATTENTION_IMPLEMENTATIONS"),
    "model.remat": ("memdyn.model.transformer", "REMAT_POLICIES"),
    "model.cpu_kernels": ("memdyn.model.cpu_kernels", "CHOICES"),
    "model.mlp": ("memdyn.model.sizes", "MLP_KINDS"),
    "optimizer.schedule": ("memdyn.config", "SCHEDULES"),
    "data.source": ("memdyn.config", "SOURCES"),
    "data.tags": ("memdyn.config", "TAGGERS"),
    "data.doc_ids": ("memdyn.config", "DOC_IDS"),
    "data.text.format": ("memdyn.data.build.text_files", "FORMATS"),
    "data.vocab.model_type": ("memdyn.data.vocab", "MODEL_TYPES"),
    "eval.memsinks_modes": ("memdyn.studies.memsinks.masks", "EVAL_MODES"),
    "memsinks.method": ("memdyn.studies.memsinks.masks", "METHODS"),
    "memsinks.mask": ("memdyn.studies.memsinks.masks", "MASK_KINDS"),
    "memsinks.id_width": ("memdyn.studies.memsinks.masks", "ID_WIDTHS"),
    "memsinks.ids": ("memdyn.studies.memsinks.masks", "IDS"),
}
EXTRA_ALLOWED = {"model.size": ("custom",)}  # a shape given field by field (memdyn import-hf writes it)
ALLOWED_NOTE = {"eval.memsinks_modes": "each of"}


@dataclasses.dataclass
class Field:
    name: str  # dotted, e.g. "data.tfds.name"
    type: str
    default: Any
    description: str
    allowed: tuple | None = None


@dataclasses.dataclass
class Group:
    name: str  # "" for the top level
    description: str
    fields: list[Field]


def base_source_path() -> str:
    """configs/base.py of this checkout (memdyn/configs/base.py in an installed wheel)."""
    from memdyn import config as config_lib

    return os.path.join(config_lib.CONFIG_DIR, "base.py")


# -- reading configs/base.py -------------------------------------------------------------------------------------
def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """line -> (comment text after '#', whether the line holds nothing but the comment)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.string[1:], tok.line[: tok.start[1]].strip() == "")
    return out


def _dotted(node: ast.AST, loop_var: str | None = None) -> list[str] | None:
    """``c.a.b`` / ``c.a["b"]`` -> ["a", "b"]; ``c.model[field]`` -> ["model", "<loop>"]; else None."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                parts.append(key.value)
            elif isinstance(key, ast.Name) and key.id == loop_var:
                parts.append("<loop>")
            else:
                return None
            node = node.value
        elif isinstance(node, ast.Name) and node.id == "c":
            return parts[::-1]
        else:
            return None


class _Source:
    def __init__(self, source: str, path: str):
        self.path = path
        self.lines = source.splitlines()
        self.comments = _comments(source)
        self.descriptions: dict[str, str] = {}  # dotted name -> description
        self.order: dict[str, tuple[int, int]] = {}  # dotted name -> (line, place in its line's block)
        self.problems: list[str] = []
        function = next(
            n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "get_config"
        )
        self._walk(function.body)

    def _trailing(self, first: int, last: int) -> list[str]:
        return [self.comments[i][0].strip() for i in range(first, last + 1) if i in self.comments]

    def _block_above(self, line: int) -> tuple[list[str], int]:
        """The whole-line comments directly above ``line`` (raw text after '#'), and the first line of the block."""
        block, i = [], line - 1
        while i in self.comments and self.comments[i][1]:
            block.insert(0, self.comments[i][0])
            i -= 1
        return block, i + 1

    def _has_trailing(self, line: int) -> bool:
        return line in self.comments and not self.comments[line][1]

    def _describe(self, name: str, first: int, last: int) -> None:
        block, start = self._block_above(first)
        own = self._trailing(first, last)
        if block and own and start - 1 >= 1 and self._has_trailing(start - 1):
            self.problems.append(
                f"{self.path}:{start}: the comment above `{name}` (line {first}) may continue the trailing comment "
                f"of line {start - 1}, and `{name}` has a comment of its own: put `{name}`'s whole description "
                "above it or beside it"
            )
        group, subfields, current = [], {}, None
        for raw in block:
            entry = re.match(r"   ([A-Za-z_][A-Za-z0-9_]*): (.*)", raw)
            if entry:
                current = entry.group(1)
                subfields[current] = [entry.group(2).strip()]
            elif current is not None and raw.startswith("     "):
                subfields[current].append(raw.strip())
            else:
                current = None
                group.append(raw.strip())
        text = " ".join(group + own).strip()
        if text:
            self.descriptions[name] = text
        self.order.setdefault(name, (first, 0))
        for i, (key, parts) in enumerate(subfields.items(), start=1):
            self.descriptions[f"{name}.{key}"] = " ".join(parts)
            self.order.setdefault(f"{name}.{key}", (first, i))

    def _walk(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                parts = _dotted(stmt.targets[0])
                if parts:
                    self._describe(".".join(parts), stmt.lineno, stmt.end_lineno)
            elif isinstance(stmt, ast.For) and isinstance(stmt.target, ast.Tuple) and stmt.target.elts:
                self._loop(stmt)

    def _loop(self, stmt: ast.For) -> None:
        """``for field, kind in (("name", type), ...): c.group[field] = ...``: one field per tuple."""
        loop_var = stmt.target.elts[0].id if isinstance(stmt.target.elts[0], ast.Name) else None
        prefixes = [
            _dotted(s.targets[0], loop_var) for s in stmt.body if isinstance(s, ast.Assign) and len(s.targets) == 1
        ]
        prefixes = [p for p in prefixes if p and p[-1] == "<loop>"]
        if not prefixes or not isinstance(stmt.iter, (ast.Tuple, ast.List)):
            return
        for element in stmt.iter.elts:
            if not (isinstance(element, ast.Tuple) and element.elts and isinstance(element.elts[0], ast.Constant)):
                continue
            for prefix in prefixes:
                self._describe(".".join(prefix[:-1] + [element.elts[0].value]), element.lineno, element.end_lineno)


# -- the config as it runs -----------------------------------------------------------------------------------------
def _type_name(node, key: str) -> str:
    from ml_collections import config_dict

    value = node[key]
    kind = node.get_type(key)
    name = getattr(kind, "__name__", str(kind))
    nullable = isinstance(node._fields[key], config_dict.FieldReference) or value is None
    return f"{name} or None" if nullable else name


def _constant(module: str, name: str):
    """A module constant: from its source when it is a literal (a dict's literal keys), else by importing it."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        with open(spec.origin) as f:
            tree = ast.parse(f.read())
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and getattr(stmt, "value", None):
                value = stmt.value
                if isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) for k in value.keys):
                    return tuple(k.value for k in value.keys)
                try:
                    return tuple(ast.literal_eval(value))
                except ValueError:
                    break
    value = getattr(importlib.import_module(module), name)
    return tuple(value)


def collect() -> tuple[list[Group], list[str]]:
    """The groups of fields in source order, and the problems (fields without a description, ambiguities)."""
    from ml_collections import config_dict

    from memdyn.configs import base

    path = base_source_path()
    with open(path) as f:
        source = _Source(f.read(), os.path.relpath(path))
    config = base.get_config()
    groups: dict[str, Group] = {"": Group("", source.descriptions.get("", ""), [])}
    problems = list(source.problems)

    def walk(node, prefix: str) -> None:
        for key in node.keys():
            name = f"{prefix}{key}"
            if isinstance(node[key], config_dict.ConfigDict):
                groups[name] = Group(name, source.descriptions.get(name, ""), [])
                walk(node[key], name + ".")
                continue
            description = source.descriptions.get(name, "")
            if not description:
                problems.append(f"config.{name} has no description in {os.path.relpath(path)}")
            allowed = None
            if name in ALLOWED:
                allowed = _constant(*ALLOWED[name]) + EXTRA_ALLOWED.get(name, ())
            group = prefix[:-1] if prefix else ""
            groups[group].fields.append(Field(name, _type_name(node, key), node[key], description, allowed))

    walk(config, "")
    line = lambda name: source.order.get(name, (10**9, 0))  # noqa: E731
    for group in groups.values():
        group.fields.sort(key=lambda f: line(f.name))
    ordered = sorted(groups.values(), key=lambda g: (g.name != "", line(g.name) if g.name else (0, 0)))
    return [g for g in ordered if g.fields], problems


# -- Markdown ------------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    text = repr(value)
    return f"`{_cell(text)}`"


def render() -> str:
    """docs/reference/config.md; ValueError when a field lacks a description."""
    groups, problems = collect()
    if problems:
        raise ValueError("\n".join(problems) + f"\n(then regenerate: {COMMAND})")
    out = [
        "# Config reference",
        "",
        "<!-- Generated from configs/base.py by memdyn/cli/config_reference.py: do not edit by hand. -->",
        "",
        "Every field of `configs/base.py`, the config every packaged config builds on: its dotted name (set it with "
        "`--config.<name>=<value>`), type, default, the values it accepts where the code checks a list of them, "
        "and what it does. The descriptions are the comments beside the fields in `configs/base.py`; a field "
        "without one fails `tests/cli/test_config_reference.py`. A run stores its resolved config as "
        "`config.json` ([outputs](outputs.md#configjson)). Regenerate this page after changing `configs/base.py`:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        '"or None" types: the field may be unset (None); defaults are Python literals.',
    ]
    for group in groups:
        out += ["", f"## {'Top-level fields' if not group.name else f'`{group.name}`'}", ""]
        if group.description:
            out += [group.description, ""]
        out += ["| Field | Type | Default | Allowed values | Description |", "|---|---|---|---|---|"]
        for f in group.fields:
            allowed = ""
            if f.allowed is not None:
                allowed = ", ".join(_code(v) for v in f.allowed)
                if f.name in ALLOWED_NOTE:
                    allowed = f"{ALLOWED_NOTE[f.name]} {allowed}"
            out.append(f"| `{f.name}` | {f.type} | {_code(f.default)} | {allowed} | {_cell(f.description)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    try:
        sys.stdout.write(render())
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
