"""Sweeps: the cross product of ``--sweep a.b=v1,v2`` specs, one workdir per combination, on three backends.

``run_sweep`` (``--backend=local``) validates every combination before any run starts, skips runs that are
already complete (a cheap look at the workdir's checkpoints, nothing is built), resumes interrupted ones
(``lifecycle.train`` does that) and trains the rest, in this process one after another or as ``parallel``
concurrent ``memdyn train`` processes, each with its own group of the host's GPUs. ``submit_slurm`` submits the
runs that are neither complete nor queued as one SLURM job array (``memdyn.sweeps.slurm``); ``run_tpu`` runs each on
every
worker of a TPU VM pod (``memdyn.sweeps.tpu``). ``<sweep_dir>/sweep.json`` lists every run with its overrides and
status;
``sweep_status`` reads it back with the workdirs and the scheduler's queue.

The runs of a sweep share JAX's persistent compilation cache, ``<sweep_dir>/compile_cache`` (or the directory
``JAX_COMPILATION_CACHE_DIR`` names): runs of one shape compile their steps once, later runs load the
executables (the same executables, so the same numbers bit for bit).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import logging
from ml_collections import config_dict

from memdyn import config as config_lib
from memdyn.rundir import runs as runs_lib
from memdyn.rundir.runs import SWEEP_FILE, parse_value
from memdyn.sweeps import slurm, tpu

_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 200  # file names are limited to 255 bytes
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


# -- the sweep -----------------------------------------------------------------------------------------------------
def _plan(
    base: config_dict.ConfigDict, sweep_dir: str, specs: list[str], base_overrides: dict[str, Any]
) -> list[dict[str, Any]]:
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
        runs.append({"name": name, "workdir": workdir, "overrides": overrides, "config": config})
    return runs


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "config"}


class _Manifest:
    """sweep.json: this call's runs, after those of earlier calls into the same directory that it does not repeat."""

    def __init__(self, sweep_dir: str, header: dict[str, Any], runs: list[dict[str, Any]]):
        self.path = os.path.join(sweep_dir, SWEEP_FILE)
        self.header, self.runs = header, runs
        names = {r["name"] for r in runs}
        self.earlier = [r for r in _read_runs(self.path) if r.get("name") not in names]

    def save(self) -> None:
        runs_lib.atomic_write_json(self.path, {**self.header, "runs": self.earlier + [_public(r) for r in self.runs]})


def _read_runs(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f).get("runs", [])


def plan_sweep(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``sweep --dry_run``: every run of the sweep, validated, with its status (complete, partial: a workdir with
    an unfinished run, or new) and its config; nothing is written."""
    base = config_lib.load_config_file(os.path.abspath(config_path), config_arg)
    runs = _plan(base, os.path.abspath(sweep_dir), specs, dict(base_overrides or {}))
    for run in runs:
        if runs_lib.is_complete(run["workdir"], run["config"].num_steps):
            run["status"] = "complete"
        else:
            run["status"] = "partial" if runs_lib.read_config(run["workdir"]) is not None else "new"
    return runs


def run_sweep(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None = None,
    parallel: int = 1,
) -> list[dict[str, Any]]:
    """Trains every combination of ``specs`` in ``sweep_dir/<run_name>``; returns sweep.json's runs of this call.

    ``base_overrides`` ({"a.b": value}) apply to every run, under the sweep's own. Runs are trained in this
    process when ``parallel`` is 1, else as up to ``parallel`` concurrent ``python -m memdyn train`` processes
    (environment inherited: XLA_FLAGS, JAX_PLATFORMS), each logging to ``sweep_dir/logs/<run_name>.log``.
    Failed runs do not stop the others; a RuntimeError names them at the end.
    """
    if parallel < 1:
        raise ValueError(f"parallel={parallel} must be at least 1")
    config_path, sweep_dir = os.path.abspath(config_path), os.path.abspath(sweep_dir)
    base = config_lib.load_config_file(config_path, config_arg)
    base_overrides = dict(base_overrides or {})
    runs = _plan(base, sweep_dir, specs, base_overrides)
    os.makedirs(sweep_dir, exist_ok=True)
    header = {"config": config_path, "config_arg": config_arg, "specs": list(specs), "base_overrides": base_overrides}
    manifest = _Manifest(sweep_dir, header, runs)
    for run in runs:
        run["status"] = "skipped" if runs_lib.is_complete(run["workdir"], run["config"].num_steps) else "pending"
    manifest.save()
    todo = [(i, run) for i, run in enumerate(runs, 1) if run["status"] == "pending"]
    for i, run in enumerate(runs, 1):
        if run["status"] == "skipped":
            logging.info("run %d/%d: %s (already complete, skipped)", i, len(runs), run["name"])
    if parallel == 1:
        _run_in_process(todo, len(runs), manifest, compile_cache_env(sweep_dir))
    else:
        command = [sys.executable, "-m", "memdyn", "train", _config_flag(config_path, config_arg)]
        _run_processes(todo, len(runs), manifest, command, base_overrides, parallel, sweep_dir)
    failed = [r["name"] for r in runs if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} sweep runs failed ({', '.join(failed)}); see {manifest.path}")
    return [_public(r) for r in runs]


def _load_plan(
    config_path: str, config_arg: str | None, sweep_dir: str, specs: list[str], base_overrides: dict[str, Any] | None
) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
    config_path, sweep_dir = os.path.abspath(config_path), os.path.abspath(sweep_dir)
    base_overrides = dict(base_overrides or {})
    runs = _plan(config_lib.load_config_file(config_path, config_arg), sweep_dir, specs, base_overrides)
    for index, run in enumerate(runs):
        run["index"] = index
    return config_path, sweep_dir, base_overrides, runs


def submit_slurm(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None,
    resources: slurm.Resources,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Submits the sweep's runs that are neither complete nor still queued as one SLURM job array (array task i =
    run i of the sweep); submitting the same sweep again resubmits only the runs that failed or never ran.

    Returns ``{"runs": [...], "array_id": <id or None>, "script": <path or the text when dry_run>}``. With
    ``dry_run`` everything is checked (SLURM's ``sbatch --test-only`` too) and nothing written or submitted.
    """
    config_path, sweep_dir, base_overrides, runs = _load_plan(config_path, config_arg, sweep_dir, specs, base_overrides)
    slurm.check_resources(resources, sweep_dir)
    manifest_path = os.path.join(sweep_dir, SWEEP_FILE)
    earlier = {r["name"]: r for r in _read_runs(manifest_path)}
    queue = slurm.queued([r["slurm_job"].split("_")[0] for r in earlier.values() if r.get("slurm_job")])
    unrecorded = _queued_by_index(sweep_dir)
    todo = []
    for run in runs:
        before = earlier.get(run["name"], {})
        if runs_lib.is_complete(run["workdir"], run["config"].num_steps):
            run["status"] = "skipped"
        elif before.get("slurm_job") in queue:  # still the scheduler's: leave it
            run.update(status=queue[before["slurm_job"]], slurm_job=before["slurm_job"], log=before.get("log"))
        elif run["index"] in unrecorded:  # queued, though sweep.json does not say so: leave it, and record it
            job, state = unrecorded[run["index"]]
            run.update(status=state, slurm_job=job, log=_slurm_log(sweep_dir, job))
        else:
            todo.append(run)
    tasks = [{"index": run["index"], "name": run["name"], "args": _run_flags(run, base_overrides)} for run in todo]
    command = [sys.executable, "-m", "memdyn", "train", _config_flag(config_path, config_arg)]
    env = {**_package_env(), **compile_cache_env(sweep_dir)}
    text = slurm.script(tasks, command, env, resources, sweep_dir, slurm.job_name(sweep_dir))
    if todo:  # SLURM's own check, before anything is written
        with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as f:
            f.write(text)
            f.flush()
            slurm.check_script(f.name)
    if dry_run:
        for run in todo:
            run["status"] = "to submit"
        return {"runs": [_public(r) for r in runs], "array_id": None, "script": text if todo else None}
    header = {
        "config": config_path,
        "config_arg": config_arg,
        "specs": list(specs),
        "base_overrides": base_overrides,
        "backend": "slurm",
    }
    if not todo:
        if unrecorded:  # what the queue told about runs sweep.json had lost
            _Manifest(sweep_dir, header, runs).save()
        return {"runs": [_public(r) for r in runs], "array_id": None, "script": None}
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
        job = f"{array_id}_{run['index']}"
        run.update(status="submitted", slurm_job=job, log=_slurm_log(sweep_dir, job))
    _Manifest(sweep_dir, header, runs).save()
    return {"runs": [_public(r) for r in runs], "array_id": array_id, "script": path}


def _queued_by_index(sweep_dir: str) -> dict[int, tuple[str, str]]:
    """The sweep's queued array tasks by run index (array task i is run i): ``{i: (job, state)}``, found by the
    sweep's job name whether or not sweep.json recorded them."""
    return {
        int(m.group(1)): (job, state)
        for job, state in slurm.queued_by_name(slurm.job_name(sweep_dir)).items()
        if (m := re.fullmatch(r"\d+_(\d+)", job))
    }


def _slurm_log(sweep_dir: str, job: str) -> str:
    return os.path.join(sweep_dir, "logs", f"slurm-{job}.log")


def run_tpu(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None,
    pod: tpu.Pod,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Runs the sweep's unfinished runs one after another, each on every worker of the TPU VM ``pod``; with
    ``dry_run`` only lists them, each with the gcloud command that would run it (``run["command"]``)."""
    tpu.check_pod(pod)
    config_path, sweep_dir, base_overrides, runs = _load_plan(config_path, config_arg, sweep_dir, specs, base_overrides)
    for run in runs:
        done = runs_lib.is_complete(run["workdir"], run["config"].num_steps)
        run["status"] = "skipped" if done else "to run" if dry_run else "pending"
        run["command"] = tpu.worker_command(
            pod, [_worker_config_flag(config_path, config_arg), *_run_flags(run, base_overrides)]
        )
    if dry_run:
        return [_public(r) for r in runs]
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    header = {
        "config": config_path,
        "config_arg": config_arg,
        "specs": list(specs),
        "base_overrides": base_overrides,
        "backend": "tpu",
    }
    manifest = _Manifest(sweep_dir, header, runs)
    manifest.save()
    for run in [r for r in runs if r["status"] == "pending"]:
        log_path = os.path.join(sweep_dir, "logs", f"{run['name']}.log")
        logging.info("run %s on every worker of %s (its log: %s)", run["name"], pod.name, log_path)
        _mark_running(run, os.getpid())
        manifest.save()
        returncode = tpu.run(run["command"], log_path)
        _finish(run, returncode, log_path)
        manifest.save()
    failed = [r["name"] for r in runs if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} sweep runs failed ({', '.join(failed)}); see {manifest.path}")
    return [_public(r) for r in runs]


def sweep_status(sweep_dir: str) -> list[dict[str, Any]]:
    """Every run of sweep.json: ``status`` done (trained to its num_steps), running or pending (the scheduler's
    word for a SLURM task; sweep.json's for a local or TPU run), interrupted (sweep.json says so, or says running
    while the process it names on this host is gone), failed (a SLURM task the scheduler no longer holds, or a run
    sweep.json says failed) or not started; ``step``: its latest checkpoint. A SLURM run the queue holds under the
    sweep's job name shows that task, whatever sweep.json recorded (a submission cut short before recording it)."""
    path = os.path.join(os.path.abspath(sweep_dir), SWEEP_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--workdir={sweep_dir!r} holds no sweep ({SWEEP_FILE} is missing)")
    recorded = _read_runs(path)
    on_slurm = any(r.get("slurm_job") for r in recorded)
    queue = slurm.queued([r["slurm_job"].split("_")[0] for r in recorded if r.get("slurm_job")]) if on_slurm else {}
    by_index = _queued_by_index(os.path.dirname(path)) if on_slurm else {}
    out = []
    for run in recorded:
        stored = runs_lib.read_config(run["workdir"])
        step = runs_lib.latest_checkpoint(run["workdir"])
        num_steps = stored.get("num_steps") if stored else None
        if stored is not None and step is not None and num_steps is not None and step >= num_steps:
            status = "done"
        elif run.get("slurm_job") and run["slurm_job"] not in queue and run.get("index") in by_index:
            job, status = by_index[run["index"]]
            run = {**run, "slurm_job": job, "log": _slurm_log(os.path.dirname(path), job)}
        elif run.get("slurm_job"):
            status = queue.get(run["slurm_job"], "failed")
        elif run.get("status") == "running" and not _still_running(run):
            status = "interrupted"  # its process ended without recording how (killed, or the host restarted)
        else:
            status = {
                "running": "running",
                "pending": "pending",
                "failed": "failed",
                "interrupted": "interrupted",
                "complete": "failed",
                "skipped": "failed",
            }.get(run.get("status"), "not started")
        out.append(
            {
                "name": run["name"],
                "status": status,
                "step": step,
                "num_steps": num_steps,
                "job": run.get("slurm_job"),
                "log": run.get("log") or run.get("error"),
            }
        )
    return out


def _mark_running(run: dict[str, Any], pid: int) -> None:
    """Records the run as running in process ``pid`` of this host, for ``sweep_status`` to check it is alive."""
    run.update(status="running", host=socket.gethostname(), pid=pid)


def _still_running(run: dict[str, Any]) -> bool:
    """False when sweep.json names a process of this host that no longer exists; True when it exists or cannot be
    checked from here (another host, or a sweep.json written before memdyn recorded processes)."""
    if run.get("host") != socket.gethostname() or not run.get("pid"):
        return True
    try:
        os.kill(run["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _run_in_process(todo: list[tuple[int, dict]], total: int, manifest: _Manifest, cache_env: dict[str, str]) -> None:
    from memdyn.train import job, loop  # imports JAX

    with _compile_cache(cache_env):
        _train_each(todo, total, manifest, job, loop)


@contextlib.contextmanager
def _compile_cache(cache_env: dict[str, str]):
    """This process's JAX config pointed at the sweep's compilation cache while the sweep runs, then restored."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    settings = {
        "jax_compilation_cache_dir": cache_env["JAX_COMPILATION_CACHE_DIR"],
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    compilation_cache.reset_cache()  # set up again at the next compilation, from the new directory
    for name, value in settings.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def _train_each(todo, total: int, manifest: _Manifest, job, loop) -> None:
    for i, run in todo:
        logging.info("run %d/%d: %s", i, total, run["name"])
        _mark_running(run, os.getpid())
        manifest.save()
        try:
            job.train(run["config"], run["workdir"])
            run["status"] = "complete"
        except (KeyboardInterrupt, loop.Preempted):  # stop the sweep; the run resumes next time
            run["status"] = "interrupted"
            raise
        except Exception as e:  # a failed run does not stop the others
            logging.exception("sweep run %s failed", run["name"])
            run.update(status="failed", error=f"{type(e).__name__}: {e}")
        finally:
            manifest.save()


def _config_flag(config_path: str, config_arg: str | None) -> str:
    return f"--config={config_path}" + (f":{config_arg}" if config_arg is not None else "")


def _worker_config_flag(config_path: str, config_arg: str | None) -> str:
    """The config flag for another machine's memdyn: a packaged config by name (its path there differs), any
    other config by its path (which must be the same there: a shared filesystem)."""
    if os.path.dirname(config_path) == os.path.abspath(config_lib.CONFIG_DIR):
        name = os.path.splitext(os.path.basename(config_path))[0]
        return f"--config={name}" + (f":{config_arg}" if config_arg is not None else "")
    return _config_flag(config_path, config_arg)


def _run_flags(run: dict[str, Any], base_overrides: dict[str, Any]) -> list[str]:
    """The `memdyn train` flags of one run after the config flag: its overrides and its workdir."""
    return [
        *(format_flag(k, v) for k, v in {**base_overrides, **run["overrides"]}.items()),
        f"--workdir={run['workdir']}",
    ]


def _package_env() -> dict[str, str]:
    """PYTHONPATH that makes a child process import this memdyn (a checkout that is not installed, too)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


# -- local device groups -------------------------------------------------------------------------------------------
def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The host's GPUs that runs may use: ``CUDA_VISIBLE_DEVICES`` when set, else the ones ``nvidia-smi`` lists."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    # "GPU 0: NVIDIA H100 ... (UUID: ...)"; MIG devices are indented lines below their GPU
    return re.findall(r"^GPU (\d+):", listed.stdout, flags=re.MULTILINE) if listed.returncode == 0 else []


def device_groups(gpus: list[str], parallel: int, environ: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` process slots on a host with ``gpus``: a disjoint group of
    len(gpus) // parallel GPUs each; with more slots than GPUs, slots share GPUs round-robin and each preallocates
    only its share of a GPU's memory (JAX's default is 75% per process, so two would not fit). A memory setting the
    user made (XLA_PYTHON_CLIENT_MEM_FRACTION / _PREALLOCATE / _ALLOCATOR) is kept. No GPUs: nothing to set."""
    environ = os.environ if environ is None else environ
    if not gpus:
        return [{} for _ in range(parallel)]
    if len(gpus) >= parallel:
        per = len(gpus) // parallel
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per : (i + 1) * per])} for i in range(parallel)]
    groups = [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(parallel)]
    user_set = any(
        k in environ
        for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")
    )
    if not user_set:
        sharers = -(-parallel // len(gpus))
        for group in groups:
            group["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharers:.3f}"
    return groups


def format_flag(key: str, value: Any) -> str:
    """``--config.<key>=<value>`` as ml_collections' config flags parse it back into ``value``."""
    text = value if isinstance(value, str) else repr(tuple(value)) if isinstance(value, list) else repr(value)
    return f"--config.{key}={text}"


def _on_sigterm(signum, frame):
    """SIGTERM to the sweep: exit, stopping its runs first (each saves a checkpoint)."""
    raise SystemExit(128 + signum)


def _run_processes(
    todo: list[tuple[int, dict]],
    total: int,
    manifest: _Manifest,
    command: list[str],
    base_overrides: dict[str, Any],
    parallel: int,
    sweep_dir: str,
) -> None:
    """Up to ``parallel`` concurrent ``memdyn train`` processes, each in its own session (Ctrl-C stops the sweep,
    which then SIGTERMs its runs so they save a checkpoint)."""
    log_dir = os.path.join(sweep_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, **_package_env(), **compile_cache_env(sweep_dir))
    gpus = visible_gpus()
    free_slots = list(enumerate(device_groups(gpus, parallel)))
    if gpus and len(gpus) % parallel and len(gpus) > parallel:
        logging.warning("%d GPUs, %d runs at a time: %d GPUs stay idle", len(gpus), parallel, len(gpus) % parallel)
    queue, running = list(todo), {}
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        while queue or running:
            while queue and len(running) < parallel:
                i, run = queue.pop(0)
                slot, devices = free_slots.pop(0)
                log_path = os.path.join(log_dir, f"{run['name']}.log")
                logging.info("run %d/%d: %s started (its log: %s)", i, total, run["name"], log_path)
                with open(log_path, "w") as log:
                    proc = subprocess.Popen(
                        [*command, *_run_flags(run, base_overrides)],
                        env={**env, **devices},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running[proc] = (run, log_path, (slot, devices))
                _mark_running(run, proc.pid)
                if devices:
                    run["devices"] = devices
                manifest.save()
            for proc in [p for p in running if p.poll() is not None]:
                run, log_path, slot = running.pop(proc)
                free_slots.append(slot)
                _finish(run, proc.returncode, log_path)
                manifest.save()
                done = sum(r["status"] in ("complete", "failed") for _, r in todo)
                logging.info(
                    "run %s: %s (%d of %d finished, %d running; its log: %s)",
                    run["name"],
                    run["status"],
                    done,
                    len(todo),
                    len(running),
                    log_path,
                )
            time.sleep(0.2)
    except BaseException:
        _stop(running)
        manifest.save()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _finish(run: dict[str, Any], returncode: int, log_path: str) -> None:
    if returncode == 0:
        run["status"] = "complete"
        return
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    run.update(status="failed", error=f"exit status {returncode}: {lines[-1] if lines else ''} (log: {log_path})")
    logging.error("sweep run %s failed: %s", run["name"], run["error"])


def _stop(running: dict[subprocess.Popen, tuple]) -> None:
    """SIGTERMs the running runs (they save a checkpoint and exit) and waits for them."""
    for proc, (run, *_) in running.items():
        proc.terminate()
        run["status"] = "interrupted"
    for proc in running:
        proc.wait()
