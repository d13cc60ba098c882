"""docs/reference/config.md is the rendering of configs/base.py (every field, its type, default, allowed values and
description), and every field has a description."""

import os
import re
import textwrap

import pytest

from conftest import REPO
from memdyn.cli import config_reference


def test_every_field_has_a_description():
    _, problems = config_reference.collect()
    assert not problems, "\n".join(problems) + f"\n(then regenerate: {config_reference.COMMAND})"


def test_the_reference_is_the_rendering_of_base_py():
    with open(os.path.join(REPO, config_reference.REFERENCE)) as f:
        written = f.read()
    assert written == config_reference.render(), (
        f"{config_reference.REFERENCE} differs from configs/base.py; regenerate it: {config_reference.COMMAND}"
    )


def test_every_field_of_the_config_is_in_the_reference():
    from memdyn.configs import base

    def leaves(node, prefix=""):
        for key in node.keys():
            value = node[key]
            if hasattr(value, "keys"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    rendered = config_reference.render()
    missing = [name for name in leaves(base.get_config()) if f"| `{name}` |" not in rendered]
    assert not missing


def _parse(source: str):
    return config_reference._Source(textwrap.dedent(source), "base.py")


def test_comments_above_beside_in_loops_and_per_key():
    source = _parse(
        """
        def get_config():
            c = config_dict.ConfigDict()
            c.a = 1  # beside
            # above, first line
            # above, second line
            c.b = 2
            c.g = config_dict.ConfigDict()  # a group
            for field, kind in (
                ("x", int),  # the x
                ("y", str),
            ):
                c.g[field] = config_dict.placeholder(kind)
            # the mapping group
            #   k: its key k
            #     continued
            c.m = config_dict.ConfigDict(dict(k=1))
        """
    )
    assert source.descriptions == {
        "a": "beside",
        "b": "above, first line above, second line",
        "g": "a group",
        "g.x": "the x",
        "m": "the mapping group",
        "m.k": "its key k continued",
    }
    assert not source.problems


def test_a_comment_between_two_commented_fields_is_refused():
    source = _parse(
        """
        def get_config():
            c = config_dict.ConfigDict()
            c.a = 1  # the a, which goes on
            # on the next line?
            c.b = 2  # the b
        """
    )
    assert len(source.problems) == 1 and "`b`" in source.problems[0]


def test_a_field_without_a_description_is_named(monkeypatch, tmp_path):
    path = tmp_path / "base.py"
    with open(config_reference.base_source_path()) as f:
        text, found = re.subn(r"(\n    c\.batch_size = [^#\n]*?)  #[^\n]*", r"\1", f.read())
    assert found == 1
    path.write_text(text)
    monkeypatch.setattr(config_reference, "base_source_path", lambda: str(path))
    _, problems = config_reference.collect()
    assert any("config.batch_size has no description" in p for p in problems)
    with pytest.raises(ValueError, match=config_reference.COMMAND.replace(".", r"\.")):
        config_reference.render()
