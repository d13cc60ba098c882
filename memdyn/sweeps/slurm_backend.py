"""``memdyn sweep --backend=slurm``: the sweep's runs that are neither complete nor still queued, submitted as one
SLURM job array (array task i = run i of the sweep; ``memdyn.sweeps.slurm`` writes and submits the script)."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Any

from memdyn.rundir import runs as runs_lib
from memdyn.sweeps import manifest as manifest_lib
from memdyn.sweeps import plan as plan_lib
from memdyn.sweeps import slurm
from memdyn.sweeps.commands import compile_cache_env, package_env, run_flags, train_command
from memdyn.sweeps.manifest import Manifest, SweepRun


@dataclasses.dataclass
class SlurmSubmission:
    """What ``submit_slurm`` did: every run of the sweep with its status, the array it submitted (None when it
    submitted nothing) and its batch script (the path; with ``dry_run`` the text; None when nothing is to submit)."""

    runs: list[SweepRun]
    array_id: str | None
    script: str | None


def submit_slurm(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None,
    resources: slurm.Resources,
    dry_run: bool = False,
) -> SlurmSubmission:
    """Submits the sweep's runs that are neither complete nor still queued as one SLURM job array (array task i =
    run i of the sweep); submitting the same sweep again resubmits only the runs that failed or never ran.

    With ``dry_run`` everything is checked (SLURM's ``sbatch --test-only`` too) and nothing written or submitted.
    """
    config_path, sweep_dir, base_overrides, runs = plan_lib.load_plan(
        config_path, config_arg, sweep_dir, specs, base_overrides
    )
    slurm.check_resources(resources, sweep_dir)
    earlier = {r.name: r for r in manifest_lib.read_runs(manifest_lib.manifest_path(sweep_dir))}
    queue = slurm.queued([r.slurm_job.split("_")[0] for r in earlier.values() if r.slurm_job])
    unrecorded = slurm.queued_by_index(sweep_dir)
    todo = []
    for run in runs:
        before = earlier.get(run.name)
        if plan_lib.is_complete(run):
            run.status = "skipped"
        elif before is not None and before.slurm_job in queue:  # still the scheduler's: leave it
            run.status, run.slurm_job, run.log = queue[before.slurm_job], before.slurm_job, before.log
        elif run.index in unrecorded:  # queued, though sweep.json does not say so: leave it, and record it
            job, state = unrecorded[run.index]
            run.status, run.slurm_job, run.log = state, job, slurm.task_log(sweep_dir, job)
        else:
            todo.append(run)
    tasks = [{"index": run.index, "name": run.name, "args": run_flags(run, base_overrides)} for run in todo]
    env = {**package_env(), **compile_cache_env(sweep_dir)}
    text = slurm.script(
        tasks, train_command(config_path, config_arg), env, resources, sweep_dir, slurm.job_name(sweep_dir)
    )
    if todo:  # SLURM's own check, before anything is written
        with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as f:
            f.write(text)
            f.flush()
            slurm.check_script(f.name)
    if dry_run:
        for run in todo:
            run.status = "to submit"
        return SlurmSubmission(runs, None, text if todo else None)
    header = manifest_lib.header(config_path, config_arg, specs, base_overrides, backend="slurm")
    if not todo:
        if unrecorded:  # what the queue told about runs sweep.json had lost
            Manifest(sweep_dir, header, runs).save()
        return SlurmSubmission(runs, None, None)
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    script_dir = os.path.join(sweep_dir, slurm.SCRIPT_DIR)
    numbers = [
        int(m.group(1))
        for f in (os.listdir(script_dir) if os.path.isdir(script_dir) else [])
        if (m := re.fullmatch(r"array-(\d+)\.sbatch", f))
    ]
    path = os.path.join(script_dir, f"array-{max(numbers, default=-1) + 1}.sbatch")
    runs_lib.atomic_write_text(path, text)
    array_id = slurm.submit(path)
    for run in todo:
        job = f"{array_id}_{run.index}"
        run.status, run.slurm_job, run.log = "submitted", job, slurm.task_log(sweep_dir, job)
    Manifest(sweep_dir, header, runs).save()
    return SlurmSubmission(runs, array_id, path)
