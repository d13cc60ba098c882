"""SLURM backend of ``memdyn sweep``: one job array per submission, one array task per run.

Each array task runs ``srun`` with one ``memdyn train --distributed`` process per GPU of each node (one process
on CPU nodes); ``jax.distributed.initialize()`` finds the coordinator, the process count and each process's GPU
from SLURM's variables. GPUs are asked for per node (``--gres=gpu:G``), never per task: JAX binds each process to
GPU ``SLURM_LOCALID`` of the ones it sees, which ``--gpus-per-task`` would leave as the only one.

Preemption: SLURM's SIGTERM (to the processes, or to the batch script alone, which has SLURM pass it on to them)
makes every process save the same step and exit with 143 (``memdyn.train.loop``); the batch script then requeues its
task, which resumes from that checkpoint. Everything is checked before anything is submitted: the partition, the GPUs
per node, the
filesystem of the sweep directory (several nodes must share it), and the script itself (``sbatch --test-only``).
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from typing import Any

SCRIPT_DIR = "slurm"
# Filesystem types (as `stat -f -c %T` names them) that only one machine sees.
LOCAL_FILESYSTEMS = frozenset(
    {
        "ext2/ext3",
        "ext4",
        "xfs",
        "btrfs",
        "tmpfs",
        "overlayfs",
        "zfs",
        "ramfs",
        "vfat",
        "f2fs",
        "jfs",
        "reiserfs",
        "squashfs",
    }
)
# squeue states of a task that is still the scheduler's: waiting, starting, running or on its way back.
QUEUED_STATES = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "RESIZING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "STOPPED": "running",
    "PREEMPTED": "pending",
    "SPECIAL_EXIT": "pending",
    "RESV_DEL_HOLD": "pending",
}


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each run (array task) asks SLURM for."""

    gpus_per_node: int | None  # None: not given, refused; 0: a CPU sweep
    nodes: int = 1
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # SLURM's time format: minutes, HH:MM:SS, D-HH:MM:SS
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, SLURM's format: 64G
    max_running: int | None = None  # array tasks running at once (`--array=...%N`)
    sbatch_args: tuple[str, ...] = ()  # further #SBATCH options, e.g. --qos=high

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node or 1


def check_resources(resources: Resources, sweep_dir: str) -> None:
    """Bad input, named, before anything is written or submitted."""
    for tool in ("sbatch", "squeue", "scontrol", "sinfo"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"--backend=slurm: `{tool}` is not on PATH; run the sweep on a SLURM login node")
    if resources.gpus_per_node is None:
        raise ValueError(
            "--backend=slurm needs --gpus_per_node=<G>: the GPUs of each node a run gets, one process "
            "per GPU (--gpus_per_node=0 for a CPU-only sweep, one process per node)"
        )
    if resources.gpus_per_node < 0 or resources.nodes < 1:
        raise ValueError(f"--gpus_per_node={resources.gpus_per_node} must be >= 0 and --nodes={resources.nodes} >= 1")
    if resources.max_running is not None and resources.max_running < 1:
        raise ValueError(f"--max_running={resources.max_running} must be at least 1")
    try:
        partitions = _lines(["sinfo", "-h", "-o", "%R"])
    except RuntimeError as e:  # no controller answers: say so, before anything is written
        raise ValueError(f"--backend=slurm: the SLURM controller does not answer ({e})") from None
    if resources.partition is not None and resources.partition not in partitions:
        raise ValueError(
            f"--partition={resources.partition!r} is not a partition of this cluster; its partitions: "
            f"{', '.join(sorted(set(partitions)))}"
        )
    if resources.gpus_per_node:
        partition = resources.partition or default_partition()
        gres = set(_lines(["sinfo", "-h", "-p", partition, "-o", "%G"])) if partition else set()
        if not any("gpu" in g for g in gres):
            raise ValueError(
                f"--gpus_per_node={resources.gpus_per_node}: the nodes of partition {partition!r}"
                f"{'' if resources.partition else ' (the default)'} have no GPUs (gres: "
                f"{', '.join(sorted(gres)) or 'none'}); --gpus_per_node=0 runs on CPUs"
            )
    if any(c.isspace() for c in sweep_dir) or "%" in sweep_dir:
        raise ValueError(
            f"--workdir={sweep_dir!r}: SLURM's #SBATCH lines take no whitespace and read % as a "
            "pattern in the log path; choose a sweep directory without either"
        )
    if resources.nodes > 1:
        fs = filesystem_type(sweep_dir)
        if fs in LOCAL_FILESYSTEMS:
            raise ValueError(
                f"--nodes={resources.nodes}: the sweep directory {sweep_dir!r} is on a local {fs} "
                "filesystem, which the other nodes do not see; every process of a run reads the data "
                "and writes checkpoints there: put it on a shared filesystem (NFS, Lustre, GPFS, ...)"
            )


def default_partition() -> str | None:
    """The partition a job without ``--partition`` goes to (sinfo marks it with a ``*``)."""
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    return next((p.strip().rstrip("*") for p in proc.stdout.splitlines() if p.strip().endswith("*")), None)


def filesystem_type(path: str) -> str:
    """The filesystem type of ``path`` (or of its nearest existing parent), as ``stat -f`` names it."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True).stdout.strip()


def script(
    runs: list[dict[str, Any]],
    train_command: list[str],
    env: dict[str, str],
    resources: Resources,
    sweep_dir: str,
    job_name: str,
) -> str:
    """The batch script of one job array: ``runs`` (each with ``index``, ``name``, ``args``), task i is run i."""
    r = resources
    indices = ",".join(str(run["index"]) for run in runs)
    sbatch = [
        f"--job-name={job_name}",
        f"--array={indices}" + (f"%{r.max_running}" if r.max_running else ""),
        f"--nodes={r.nodes}",
        f"--ntasks-per-node={r.tasks_per_node}",
        "--requeue",
        "--open-mode=append",
        f"--output={os.path.join(sweep_dir, 'logs', 'slurm-%A_%a.log')}",
    ]
    sbatch += [f"--gres=gpu:{r.gpus_per_node}"] if r.gpus_per_node else []
    sbatch += [
        f"--{flag}={value}"
        for flag, value in (
            ("partition", r.partition),
            ("account", r.account),
            ("time", r.time),
            ("cpus-per-task", r.cpus_per_task),
            ("mem", r.mem),
        )
        if value is not None
    ]
    sbatch += list(r.sbatch_args)
    cases = [
        f"  {run['index']}) name={shlex.quote(run['name'])}; args=({' '.join(map(shlex.quote, run['args']))}) ;;"
        for run in runs
    ]
    exports = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return "\n".join(
        [
            "#!/bin/bash",
            "# Written by `memdyn sweep --backend=slurm`: array task i trains run i of the sweep, resuming its workdir.",  # noqa: E501
            *(f"#SBATCH {line}" for line in sbatch),
            "set -u",
            *exports,
            'case "$SLURM_ARRAY_TASK_ID" in',
            *cases,
            '  *) echo "memdyn: no run has index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
            "esac",
            'echo "memdyn: run $name, attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )), job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"',  # noqa: E501
            # srun in the background so that this script can pass a SIGTERM sent to it alone (e.g. --signal=B:TERM@..)
            # on to every process of the run: through SLURM, since srun itself would kill its tasks on SIGTERM.
            # srun does not inherit --cpus-per-task from the allocation: it is given again.
            f"srun --kill-on-bad-exit=1 --ntasks-per-node={r.tasks_per_node} "
            "${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} "
            f'{" ".join(map(shlex.quote, train_command))} --distributed "${{args[@]}}" &',
            "srun_pid=$!",
            "trap 'scancel --signal=TERM \"$SLURM_JOB_ID\"' TERM",
            "wait $srun_pid; rc=$?",
            "while kill -0 $srun_pid 2>/dev/null; do wait $srun_pid; rc=$?; done  # a trapped signal ends `wait` early",
            # 143: SIGTERM, the checkpoint is saved. A task still RUNNING was signalled (preemption notice, or
            # --signal before the time limit): back to the queue, to resume. A cancelled one is COMPLETING: let it end.
            'state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null)',
            'if [ $rc -eq 143 ] && [ "$state" = RUNNING ]; then',
            '  echo "memdyn: run $name preempted; requeueing ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            "elif [ $rc -eq 143 ]; then",
            '  echo "memdyn: run $name stopped (job $state), its checkpoint saved; not requeued"',
            "fi",
            "exit $rc",
            "",
        ]
    )


def check_script(path: str) -> None:
    """``sbatch --test-only``: SLURM's own check of the script (account, time, limits), nothing submitted."""
    proc = subprocess.run(["sbatch", "--test-only", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"SLURM refuses the batch script {path}: {(proc.stderr or proc.stdout).strip()}")


def submit(path: str) -> str:
    """Submits the batch script; returns the array's job id."""
    proc = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip().split(";")[0]


def job_name(sweep_dir: str) -> str:
    """The name of every array of a sweep: its directory's name and a hash of its absolute path. The queue then
    tells which tasks are the sweep's even where sweep.json does not (a submission cut short between ``sbatch``
    and writing sweep.json)."""
    path = os.path.abspath(sweep_dir)
    return f"memdyn-{os.path.basename(path)}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def queued_by_name(name: str) -> dict[str, str]:
    """``{"<array id>_<index>": "pending" | "running"}`` for this user's queued array tasks named ``name``."""
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-n", name, "-u", getpass.getuser()], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"squeue failed, so which runs are still queued is unknown (nothing submitted): {proc.stderr.strip()}"
        )
    return _queued_tasks(proc.stdout)


def queued_by_index(sweep_dir: str) -> dict[int, tuple[str, str]]:
    """The sweep's queued array tasks by run index (array task i is run i): ``{i: (job, state)}``, found by the
    sweep's job name whether or not sweep.json recorded them."""
    return {
        int(m.group(1)): (job, state)
        for job, state in queued_by_name(job_name(sweep_dir)).items()
        if (m := re.fullmatch(r"\d+_(\d+)", job))
    }


def task_log(sweep_dir: str, job: str) -> str:
    """The log of array task ``job`` ("<array id>_<index>"), as ``script`` names it."""
    return os.path.join(sweep_dir, "logs", f"slurm-{job}.log")


def queued(array_ids: list[str]) -> dict[str, str]:
    """``{"<array id>_<index>": "pending" | "running"}`` for the array tasks the scheduler still holds."""
    if not array_ids:
        return {}
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(array_ids)))], capture_output=True, text=True
    )
    if proc.returncode != 0:
        if "Invalid job id" not in proc.stderr:  # the controller did not answer: knowing nothing, do nothing
            raise RuntimeError(
                f"squeue failed, so which runs are still queued is unknown (nothing submitted): {proc.stderr.strip()}"
            )
        if len(set(array_ids)) == 1:  # an id the scheduler has forgotten: nothing of it is queued
            return {}
        found = {}  # some ids are forgotten: ask one at a time
        for array_id in set(array_ids):
            found.update(queued([array_id]))
        return found
    return _queued_tasks(proc.stdout)


def _queued_tasks(squeue_out: str) -> dict[str, str]:
    """Parses ``squeue -r -o "%i %T"`` lines into the queued tasks' states."""
    tasks = {}
    for line in squeue_out.splitlines():
        job, _, state = line.strip().partition(" ")
        if state in QUEUED_STATES:
            tasks[job] = QUEUED_STATES[state]
    return tasks


def wait_for(array_ids: list[str], poll_seconds: float = 5.0, timeout: float | None = None) -> None:
    """Blocks until the scheduler holds none of the arrays' tasks (for scripts and tests)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while queued(array_ids):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"SLURM arrays {', '.join(array_ids)} still queued after {timeout:.0f}s")
        time.sleep(poll_seconds)


def _lines(command: list[str]) -> list[str]:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return [line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()]
