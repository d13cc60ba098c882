"""``memdyn sweep status``: every run of a sweep from its sweep.json, its workdir and the scheduler's queue."""

from __future__ import annotations

import dataclasses
import os
import socket

from memdyn.rundir import runs as runs_lib
from memdyn.rundir.runs import SWEEP_FILE
from memdyn.sweeps import manifest as manifest_lib
from memdyn.sweeps import slurm
from memdyn.sweeps.manifest import SweepRun

# sweep.json's word for a run that no scheduler holds -> the status shown (a run recorded complete or skipped
# whose checkpoint is not there failed to leave one)
_RECORDED = {
    "running": "running",
    "pending": "pending",
    "failed": "failed",
    "interrupted": "interrupted",
    "complete": "failed",
    "skipped": "failed",
}


@dataclasses.dataclass
class RunStatus:
    """One row of ``memdyn sweep status``."""

    name: str
    status: str  # done, running, pending, interrupted, failed or not started
    step: int | None  # its latest checkpoint
    num_steps: int | None  # what its config.json asks for
    job: str | None  # its SLURM array task
    log: str | None  # its log, or the error sweep.json recorded


def sweep_status(sweep_dir: str) -> list[RunStatus]:
    """Every run of sweep.json: ``status`` done (trained to its num_steps), running or pending (the scheduler's
    word for a SLURM task; sweep.json's for a local or TPU run), interrupted (sweep.json says so, or says running
    while the process it names on this host is gone), failed (a SLURM task the scheduler no longer holds, or a run
    sweep.json says failed) or not started; ``step``: its latest checkpoint. A SLURM run the queue holds under the
    sweep's job name shows that task, whatever sweep.json recorded (a submission cut short before recording it)."""
    path = manifest_lib.manifest_path(os.path.abspath(sweep_dir))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--workdir={sweep_dir!r} holds no sweep ({SWEEP_FILE} is missing)")
    recorded = manifest_lib.read_runs(path)
    on_slurm = any(r.slurm_job for r in recorded)
    queue = slurm.queued([r.slurm_job.split("_")[0] for r in recorded if r.slurm_job]) if on_slurm else {}
    by_index = slurm.queued_by_index(os.path.dirname(path)) if on_slurm else {}
    out = []
    for run in recorded:
        stored = runs_lib.read_config(run.workdir)
        step = runs_lib.latest_checkpoint(run.workdir)
        num_steps = stored.get("num_steps") if stored else None
        job, log = run.slurm_job, run.log or run.error
        if stored is not None and step is not None and num_steps is not None and step >= num_steps:
            status = "done"
        elif run.slurm_job and run.slurm_job not in queue and run.index in by_index:
            job, status = by_index[run.index]
            log = slurm.task_log(os.path.dirname(path), job)
        elif run.slurm_job:
            status = queue.get(run.slurm_job, "failed")
        elif run.status == "running" and not still_running(run):
            status = "interrupted"  # its process ended without recording how (killed, or the host restarted)
        else:
            status = _RECORDED.get(run.status, "not started")
        out.append(RunStatus(name=run.name, status=status, step=step, num_steps=num_steps, job=job, log=log))
    return out


def still_running(run: SweepRun) -> bool:
    """False when sweep.json names a process of this host that no longer exists; True when it exists or cannot be
    checked from here (another host, or a sweep.json written before memdyn recorded processes)."""
    if run.host != socket.gethostname() or not run.pid:
        return True
    try:
        os.kill(run.pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
