"""``<sweep_dir>/sweep.json``: the sweep's header (config, specs, base overrides, backend) and one entry per run.

A run's entry is a ``SweepRun``; ``to_json``/``from_json`` keep the keys sweep.json has always had (``name``,
``workdir``, ``overrides``, ``status`` and, where they apply, ``index``, ``host``, ``pid``, ``devices``, ``error``,
``slurm_job``, ``log``, ``command``), so sweeps written by earlier versions load, and keys a later version adds
are kept as they are. The file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Any

from absl import logging
from ml_collections import config_dict

from memdyn.rundir import runs as runs_lib
from memdyn.rundir.runs import SWEEP_FILE

# Recorded when set, in this order; ``name``, ``workdir`` and ``overrides`` always.
_OPTIONAL = ("status", "index", "host", "pid", "devices", "error", "slurm_job", "log", "command")


@dataclasses.dataclass
class SweepRun:
    """One run of a sweep. ``status``: new, partial or complete (planned); pending, running, complete, failed,
    interrupted or skipped (local and TPU runs); to submit, submitted, pending or running (SLURM); to run (a TPU
    dry run). ``config`` is never written: a run's config is rebuilt from the sweep's config and overrides."""

    name: str
    workdir: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str | None = None
    index: int | None = None  # its place in the sweep, task ``index`` of a SLURM array (slurm and tpu backends)
    host: str | None = None  # the host and process that run it (``sweep_status`` checks the process is alive)
    pid: int | None = None
    devices: dict[str, str] | None = None  # the environment that picked its GPUs (parallel local runs)
    error: str | None = None
    slurm_job: str | None = None  # "<array id>_<index>"
    log: str | None = None
    command: list[str] | None = None  # the gcloud command of a TPU run
    config: config_dict.ConfigDict | None = dataclasses.field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # keys this version does not know

    def to_json(self) -> dict[str, Any]:
        """The run's sweep.json entry: the fields that are set (never ``config``), and any unknown keys it was
        read with."""
        entry = {"name": self.name, "workdir": self.workdir, "overrides": self.overrides}
        entry.update({key: getattr(self, key) for key in _OPTIONAL if getattr(self, key) is not None})
        return {**self.extra, **entry}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> SweepRun:
        """A run from its sweep.json entry (one written by any memdyn version)."""
        known = {"name", "workdir", "overrides", *_OPTIONAL}
        missing = [key for key in ("name", "workdir") if key not in entry]
        if missing:
            raise ValueError(f"a run of {SWEEP_FILE} has no {' or '.join(missing)}: {entry}")
        return cls(
            **{key: value for key, value in entry.items() if key in known},
            extra={key: value for key, value in entry.items() if key not in known},
        )

    def mark_running(self, pid: int) -> None:
        """Records the run as running in process ``pid`` of this host, for ``sweep_status`` to check it is alive."""
        self.status, self.host, self.pid = "running", socket.gethostname(), pid

    def finish(self, returncode: int, log_path: str) -> None:
        """The run's status from its process's exit status: complete, or failed with the log's last line."""
        if returncode == 0:
            self.status = "complete"
            return
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        self.status = "failed"
        self.error = f"exit status {returncode}: {lines[-1] if lines else ''} (log: {log_path})"
        logging.error("sweep run %s failed: %s", self.name, self.error)


def manifest_path(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, SWEEP_FILE)


def header(
    config_path: str,
    config_arg: str | None,
    specs: list[str],
    base_overrides: dict[str, Any],
    backend: str | None = None,
) -> dict[str, Any]:
    """sweep.json's keys besides ``runs``; a local sweep records no ``backend``."""
    out = {"config": config_path, "config_arg": config_arg, "specs": list(specs), "base_overrides": base_overrides}
    return out if backend is None else {**out, "backend": backend}


def read_runs(path: str) -> list[SweepRun]:
    """The runs sweep.json at ``path`` lists (none when there is no such file)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [SweepRun.from_json(entry) for entry in json.load(f).get("runs", [])]


class Manifest:
    """sweep.json: this call's runs, after those of earlier calls into the same directory that it does not repeat."""

    def __init__(self, sweep_dir: str, header: dict[str, Any], runs: list[SweepRun]):
        self.path = manifest_path(sweep_dir)
        self.header, self.runs = header, runs
        names = {r.name for r in runs}
        self.earlier = [r for r in read_runs(self.path) if r.name not in names]

    def save(self) -> None:
        entries = [r.to_json() for r in self.earlier + self.runs]
        runs_lib.atomic_write_json(self.path, {**self.header, "runs": entries})
