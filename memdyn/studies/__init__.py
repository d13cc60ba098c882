"""memdyn's studies, one subpackage each (``memdyn/studies/<name>/``), and ``memdyn analyze <name>``.

A study's subpackage holds its analysis of finished runs (``analysis.py``: reads their CSVs and records, no JAX)
and any code only that study needs (MemSinks' masks, the parts-of-speech counts). Every ``analysis.py`` declares
its analysis with ``@register``; ``memdyn analyze`` imports them all and dispatches by name, so a new study's
analysis is one new subpackage here and nothing else. ``stats`` and ``tables`` are shared by the analyses.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
from collections.abc import Callable

import pandas as pd


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``memdyn analyze`` passes on: the runs, where to write, and the flags an analysis may read."""

    workdirs: list[str]
    out_dir: str
    set_name: str | None = None  # --set
    m_from: str | None = None  # --m_from: where `memorization` takes M(f) from
    taus: tuple[float, ...] | None = None  # --taus: the thresholds of T(N, tau) (None: the analysis's own)


@dataclasses.dataclass(frozen=True)
class Analysis:
    name: str
    help: str  # one line for `memdyn analyze --help`
    outputs: str  # the files it writes into the output directory
    run: Callable[[Options], pd.DataFrame]  # writes the outputs, returns the summary to print


_REGISTRY: dict[str, Analysis] = {}


def register(name: str, *, help: str, outputs: str):
    """Decorator: ``@register("forgetting", help=..., outputs=...)`` over ``def run(options) -> summary``."""

    def decorate(fn: Callable[[Options], pd.DataFrame]):
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"two analyses are called {name!r}")
        _REGISTRY[name] = Analysis(name, help, outputs, fn)
        return fn

    return decorate


def read_csv(path: str) -> pd.DataFrame:
    """A result CSV of a run; empty when created but never written to; FileNotFoundError naming it if absent."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def write_csvs(out_dir: str, prefix: str, frames: dict[str, pd.DataFrame]) -> None:
    """Each frame as ``<out_dir>/<prefix>_<name>.csv``, written atomically (the directory is created)."""
    from memdyn.rundir import runs

    os.makedirs(out_dir, exist_ok=True)
    for name, frame in frames.items():
        runs.atomic_write(
            os.path.join(out_dir, f"{prefix}_{name}.csv"), lambda tmp, f=frame: f.to_csv(tmp, index=False)
        )


def analyses() -> dict[str, Analysis]:
    """Every study's analysis, by name (imports each subpackage's ``analysis`` module, which registers itself)."""
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg and importlib.util.find_spec(f"{__name__}.{module.name}.analysis") is not None:
            importlib.import_module(f"{__name__}.{module.name}.analysis")
    return dict(sorted(_REGISTRY.items()))
