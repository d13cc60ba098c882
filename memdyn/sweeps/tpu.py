"""TPU VM pod backend of ``memdyn sweep``: each run is one command on every worker of the pod at once.

``gcloud compute tpus tpu-vm ssh <tpu> --worker=all --command=...`` starts ``memdyn train --distributed`` on every
worker, where ``jax.distributed.initialize()`` finds the pod's coordinator and workers by itself. The runs go one
after another, each on the whole pod. Every worker must see the sweep directory at the same path (a shared
filesystem such as Filestore or a gcsfuse mount), and memdyn installed in the interpreter ``python`` names.
``run_tpu`` runs a sweep's unfinished runs so, recording each in sweep.json.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from typing import Any

from absl import logging

from memdyn.sweeps import manifest as manifest_lib
from memdyn.sweeps import plan as plan_lib
from memdyn.sweeps.commands import run_flags, worker_config_flag
from memdyn.sweeps.local import check_failed
from memdyn.sweeps.manifest import Manifest, SweepRun


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str | None
    zone: str | None
    project: str | None = None
    python: str = "python3"  # the workers' interpreter, with memdyn installed


def check_pod(pod: Pod) -> None:
    missing = [flag for flag, value in (("--tpu", pod.name), ("--zone", pod.zone)) if not value]
    if missing:
        raise ValueError(f"--backend=tpu needs {' and '.join(missing)} (the TPU VM and its zone, as gcloud names them)")


def worker_command(pod: Pod, train_args: list[str]) -> list[str]:
    """The gcloud command that runs ``python -m memdyn train --distributed <train_args>`` on every worker."""
    remote = " ".join(shlex.quote(a) for a in [pod.python, "-m", "memdyn", "train", "--distributed", *train_args])
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", pod.name, f"--zone={pod.zone}"]
    command += [f"--project={pod.project}"] if pod.project else []
    return command + ["--worker=all", f"--command={remote}"]


def run(command: list[str], log_path: str) -> int:
    """Runs one worker command (``gcloud`` must be on PATH), its output to ``log_path``; returns its exit status."""
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(
            f"--backend=tpu: `{command[0]}` is not on PATH; `memdyn sweep --backend=tpu "
            "--dry_run` prints the commands to run elsewhere"
        )
    with open(log_path, "a") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def run_tpu(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None,
    pod: Pod,
    dry_run: bool = False,
) -> list[SweepRun]:
    """Runs the sweep's unfinished runs one after another, each on every worker of the TPU VM ``pod``; with
    ``dry_run`` only lists them, each with the gcloud command that would run it (``run.command``)."""
    check_pod(pod)
    config_path, sweep_dir, base_overrides, runs = plan_lib.load_plan(
        config_path, config_arg, sweep_dir, specs, base_overrides
    )
    config = worker_config_flag(config_path, config_arg)
    for sweep_run in runs:  # (``run`` is this module's function that runs a command)
        done = plan_lib.is_complete(sweep_run)
        sweep_run.status = "skipped" if done else "to run" if dry_run else "pending"
        sweep_run.command = worker_command(pod, [config, *run_flags(sweep_run, base_overrides)])
    if dry_run:
        return runs
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    header = manifest_lib.header(config_path, config_arg, specs, base_overrides, backend="tpu")
    manifest = Manifest(sweep_dir, header, runs)
    manifest.save()
    for sweep_run in [r for r in runs if r.status == "pending"]:
        log_path = os.path.join(sweep_dir, "logs", f"{sweep_run.name}.log")
        logging.info("run %s on every worker of %s (its log: %s)", sweep_run.name, pod.name, log_path)
        sweep_run.mark_running(os.getpid())
        manifest.save()
        sweep_run.finish(run(sweep_run.command, log_path), log_path)
        manifest.save()
    check_failed(runs, manifest.path)
    return runs
