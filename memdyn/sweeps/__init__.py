"""Sweeps: the cross product of ``--sweep a.b=v1,v2`` specs, one workdir per combination, on three backends.

- ``plan``: parsing the specs, run names and workdirs, validating every run before any starts, ``plan_sweep``
  (``memdyn sweep --dry_run``: each run complete, partial or new).
- ``manifest``: ``<sweep_dir>/sweep.json``, one ``SweepRun`` per run.
- ``local``: ``run_sweep`` (``--backend=local``): in this process or as parallel ``memdyn train`` processes, each
  with its own group of the host's GPUs (``visible_gpus``, ``device_groups``).
- ``slurm_backend``: ``submit_slurm``, one job array (``slurm``: the batch script, sbatch and squeue).
- ``tpu``: ``run_tpu``, each run on every worker of a TPU VM pod.
- ``status``: ``sweep_status`` (``memdyn sweep status``).
- ``commands``: a run's ``memdyn train`` command line and environment, the shared compilation cache.

The names below are the package's public API.
"""

from memdyn.sweeps.commands import COMPILE_CACHE, compile_cache_env, format_flag
from memdyn.sweeps.local import device_groups, run_sweep, visible_gpus
from memdyn.sweeps.manifest import Manifest, SweepRun, read_runs
from memdyn.sweeps.plan import parse_sweep, plan_sweep, run_name
from memdyn.sweeps.slurm_backend import SlurmSubmission, submit_slurm
from memdyn.sweeps.status import RunStatus, sweep_status
from memdyn.sweeps.tpu import run_tpu

__all__ = [
    "COMPILE_CACHE",
    "Manifest",
    "RunStatus",
    "SlurmSubmission",
    "SweepRun",
    "compile_cache_env",
    "device_groups",
    "format_flag",
    "parse_sweep",
    "plan_sweep",
    "read_runs",
    "run_name",
    "run_sweep",
    "run_tpu",
    "submit_slurm",
    "sweep_status",
    "visible_gpus",
]
