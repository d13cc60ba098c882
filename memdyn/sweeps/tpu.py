"""TPU VM pod backend of ``memdyn sweep``: each run is one command on every worker of the pod at once.

``gcloud compute tpus tpu-vm ssh <tpu> --worker=all --command=...`` starts ``memdyn train --distributed`` on every
worker, where ``jax.distributed.initialize()`` finds the pod's coordinator and workers by itself. The runs go one
after another, each on the whole pod. Every worker must see the sweep directory at the same path (a shared
filesystem such as Filestore or a gcsfuse mount), and memdyn installed in the interpreter ``python`` names.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess


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
