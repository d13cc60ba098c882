"""The ``memdyn train`` command line and environment of a sweep's run in a process of its own: a parallel local
run, a SLURM array task or a TPU worker."""

from __future__ import annotations

import os
import sys
from typing import Any

import memdyn
from memdyn import config as config_lib
from memdyn.sweeps.manifest import SweepRun

COMPILE_CACHE = "compile_cache"


def compile_cache_env(sweep_dir: str) -> dict[str, str]:
    """Environment that points JAX's persistent compilation cache at the sweep's, caching every executable (the
    default keeps only those that took over a second to compile); a cache the user set is kept."""
    return {
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.path.join(sweep_dir, COMPILE_CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def package_env() -> dict[str, str]:
    """PYTHONPATH that makes a child process import this memdyn (a checkout that is not installed, too)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(memdyn.__file__)))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def config_flag(config_path: str, config_arg: str | None) -> str:
    return f"--config={config_path}" + (f":{config_arg}" if config_arg is not None else "")


def worker_config_flag(config_path: str, config_arg: str | None) -> str:
    """The config flag for another machine's memdyn: a packaged config by name (its path there differs), any
    other config by its path (which must be the same there: a shared filesystem)."""
    if os.path.dirname(config_path) == os.path.abspath(config_lib.CONFIG_DIR):
        name = os.path.splitext(os.path.basename(config_path))[0]
        return f"--config={name}" + (f":{config_arg}" if config_arg is not None else "")
    return config_flag(config_path, config_arg)


def train_command(config_path: str, config_arg: str | None) -> list[str]:
    """``python -m memdyn train --config=...`` in this interpreter; a run's ``run_flags`` follow."""
    return [sys.executable, "-m", "memdyn", "train", config_flag(config_path, config_arg)]


def format_flag(key: str, value: Any) -> str:
    """``--config.<key>=<value>`` as ml_collections' config flags parse it back into ``value``."""
    text = value if isinstance(value, str) else repr(tuple(value)) if isinstance(value, list) else repr(value)
    return f"--config.{key}={text}"


def run_flags(run: SweepRun, base_overrides: dict[str, Any]) -> list[str]:
    """The `memdyn train` flags of one run after the config flag: its overrides and its workdir."""
    return [*(format_flag(k, v) for k, v in {**base_overrides, **run.overrides}.items()), f"--workdir={run.workdir}"]
