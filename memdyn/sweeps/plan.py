"""A sweep's plan: the cross product of ``--sweep a.b=v1,v2`` specs, one run (name, workdir, overrides, config) per
combination, every one validated before any run starts; ``plan_sweep`` (``memdyn sweep --dry_run``) adds whether
each is complete, partial or new. Nothing here writes anything."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from typing import Any

from ml_collections import config_dict

from memdyn import config as config_lib
from memdyn.rundir import runs as runs_lib
from memdyn.rundir.runs import parse_value
from memdyn.sweeps.manifest import SweepRun

_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 200  # file names are limited to 255 bytes
_OPEN, _CLOSE = "([{", ")]}"


# -- specs -----------------------------------------------------------------------------------------------------
def _split_values(text: str, spec: str) -> list[str]:
    """Splits at the commas outside brackets and quotes: ``(2,2),(4,1)`` -> ``["(2,2)", "(4,1)"]``."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"malformed sweep spec {spec!r}: unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"malformed sweep spec {spec!r}: unclosed bracket or quote")
    items.append(text[start:])
    if any(not item.strip() for item in items):
        raise ValueError(f"malformed sweep spec {spec!r}: empty value")
    return items


def _parse_spec(spec: str) -> tuple[str, list[Any]]:
    key, eq, values = spec.partition("=")
    key = key.strip()
    if not eq or not _KEY.match(key):
        raise ValueError(f"malformed sweep spec {spec!r}: expected <field>=<v1>,<v2>,... (e.g. seed=0,1,2)")
    return key, [parse_value(v) for v in _split_values(values, spec)]


def parse_sweep(specs: list[str]) -> list[dict[str, Any]]:
    """The cross product of ``"a.b=v1,v2"`` specs as override dicts, the first spec varying slowest."""
    parsed = [_parse_spec(spec) for spec in specs]
    keys = [key for key, _ in parsed]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"sweep specs name {', '.join(repeated)} more than once")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in parsed))]


# -- names and configs -------------------------------------------------------------------------------------------
def _name_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(_name_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def run_name(overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe directory name: ``model.size=tiny,seed=1`` (``default`` when empty)."""
    if not overrides:
        return "default"
    name = ",".join(f"{_UNSAFE.sub('_', k)}={_UNSAFE.sub('_', _name_value(v))}" for k, v in overrides.items())
    if len(name) > _MAX_NAME:  # keep it unique when cut
        name = name[: _MAX_NAME - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


# -- the plan ------------------------------------------------------------------------------------------------------
def plan_runs(
    base: config_dict.ConfigDict, sweep_dir: str, specs: list[str], base_overrides: dict[str, Any]
) -> list[SweepRun]:
    """Every run's name, workdir, overrides and config, all validated before any run starts."""
    runs, seen = [], {}
    for overrides in parse_sweep(specs):
        name = run_name(overrides)
        if name in seen:
            raise ValueError(f"sweep runs {seen[name]} and {overrides} share the directory name {name!r}")
        seen[name] = overrides
        workdir = os.path.join(sweep_dir, name)
        try:
            config = config_lib.apply_overrides(base, {**base_overrides, **overrides})
            config_lib.validate(config)
            stored = runs_lib.read_config(workdir)
            if stored is not None:
                runs_lib.check_compatible(stored, config, repr(workdir))
        except ValueError as e:
            raise ValueError(f"sweep run {name}: {e}") from None
        runs.append(SweepRun(name=name, workdir=workdir, overrides=overrides, config=config))
    return runs


def load_plan(
    config_path: str, config_arg: str | None, sweep_dir: str, specs: list[str], base_overrides: dict[str, Any] | None
) -> tuple[str, str, dict[str, Any], list[SweepRun]]:
    """``plan_runs`` from the config file, each run numbered (``index``: its SLURM array task); returns the
    absolute config path and sweep directory, the base overrides and the runs."""
    config_path, sweep_dir = os.path.abspath(config_path), os.path.abspath(sweep_dir)
    base_overrides = dict(base_overrides or {})
    runs = plan_runs(config_lib.load_config_file(config_path, config_arg), sweep_dir, specs, base_overrides)
    for index, run in enumerate(runs):
        run.index = index
    return config_path, sweep_dir, base_overrides, runs


def is_complete(run: SweepRun) -> bool:
    """Whether the run's workdir holds it trained to its config's num_steps (a look at the checkpoints only)."""
    return runs_lib.is_complete(run.workdir, run.config.num_steps)


def plan_sweep(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None = None,
) -> list[SweepRun]:
    """``sweep --dry_run``: every run of the sweep, validated, with its status (complete, partial: a workdir with
    an unfinished run, or new) and its config; nothing is written."""
    base = config_lib.load_config_file(os.path.abspath(config_path), config_arg)
    runs = plan_runs(base, os.path.abspath(sweep_dir), specs, dict(base_overrides or {}))
    for run in runs:
        if is_complete(run):
            run.status = "complete"
        else:
            run.status = "partial" if runs_lib.read_config(run.workdir) is not None else "new"
    return runs
