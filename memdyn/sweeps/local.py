"""``memdyn sweep --backend=local``: the runs on this host, in this process one after another or as ``parallel``
concurrent ``memdyn train`` processes, each with its own group of the host's GPUs.

Every combination is validated before any run starts; complete runs are skipped (a cheap look at the workdir's
checkpoints, nothing is built), interrupted ones resume (``lifecycle.train`` does that). The runs share JAX's
persistent compilation cache, ``<sweep_dir>/compile_cache`` (or the directory ``JAX_COMPILATION_CACHE_DIR``
names): runs of one shape compile their steps once, later runs load the executables (the same executables, so the
same numbers bit for bit).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from typing import Any

from absl import logging

from memdyn import config as config_lib
from memdyn.sweeps import manifest as manifest_lib
from memdyn.sweeps import plan as plan_lib
from memdyn.sweeps.commands import compile_cache_env, package_env, run_flags, train_command
from memdyn.sweeps.manifest import Manifest, SweepRun


def run_sweep(
    config_path: str,
    config_arg: str | None,
    sweep_dir: str,
    specs: list[str],
    base_overrides: dict[str, Any] | None = None,
    parallel: int = 1,
) -> list[SweepRun]:
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
    runs = plan_lib.plan_runs(base, sweep_dir, specs, base_overrides)
    os.makedirs(sweep_dir, exist_ok=True)
    manifest = Manifest(sweep_dir, manifest_lib.header(config_path, config_arg, specs, base_overrides), runs)
    for run in runs:
        run.status = "skipped" if plan_lib.is_complete(run) else "pending"
    manifest.save()
    todo = [(i, run) for i, run in enumerate(runs, 1) if run.status == "pending"]
    for i, run in enumerate(runs, 1):
        if run.status == "skipped":
            logging.info("run %d/%d: %s (already complete, skipped)", i, len(runs), run.name)
    if parallel == 1:
        _run_in_process(todo, len(runs), manifest, compile_cache_env(sweep_dir))
    else:
        command = train_command(config_path, config_arg)
        _run_processes(todo, len(runs), manifest, command, base_overrides, parallel, sweep_dir)
    check_failed(runs, manifest.path)
    return runs


def check_failed(runs: list[SweepRun], manifest_path: str) -> None:
    """A RuntimeError naming the runs that failed, if any."""
    failed = [r.name for r in runs if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} sweep runs failed ({', '.join(failed)}); see {manifest_path}")


# -- in this process -----------------------------------------------------------------------------------------------
def _run_in_process(
    todo: list[tuple[int, SweepRun]], total: int, manifest: Manifest, cache_env: dict[str, str]
) -> None:
    from memdyn.train import job, loop  # imports JAX

    with compilation_cache_in(cache_env["JAX_COMPILATION_CACHE_DIR"]):
        _train_each(todo, total, manifest, job, loop)


@contextlib.contextmanager
def compilation_cache_in(directory: str):
    """This process's JAX config pointed at the persistent compilation cache in ``directory`` (every executable
    cached) while the block runs, then restored: runs of the same programs compile once."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    settings = {
        "jax_compilation_cache_dir": directory,
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


def _train_each(todo: list[tuple[int, SweepRun]], total: int, manifest: Manifest, job, loop) -> None:
    for i, run in todo:
        logging.info("run %d/%d: %s", i, total, run.name)
        run.mark_running(os.getpid())
        manifest.save()
        try:
            job.train(run.config, run.workdir)
            run.status = "complete"
        except (KeyboardInterrupt, loop.Preempted):  # stop the sweep; the run resumes next time
            run.status = "interrupted"
            raise
        except Exception as e:  # a failed run does not stop the others
            logging.exception("sweep run %s failed", run.name)
            run.status, run.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            manifest.save()


# -- device groups -------------------------------------------------------------------------------------------------
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


# -- parallel processes --------------------------------------------------------------------------------------------
def _on_sigterm(signum, frame):
    """SIGTERM to the sweep: exit, stopping its runs first (each saves a checkpoint)."""
    raise SystemExit(128 + signum)


def _run_processes(
    todo: list[tuple[int, SweepRun]],
    total: int,
    manifest: Manifest,
    command: list[str],
    base_overrides: dict[str, Any],
    parallel: int,
    sweep_dir: str,
) -> None:
    """Up to ``parallel`` concurrent ``memdyn train`` processes, each in its own session: the terminal's Ctrl-C
    reaches the sweep only, which then SIGTERMs its runs so they save a checkpoint, says what each saved, and
    stops with a KeyboardInterrupt (exit status 130); a second Ctrl-C meanwhile stops them at once."""
    log_dir = os.path.join(sweep_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, **package_env(), **compile_cache_env(sweep_dir))
    gpus = visible_gpus()
    free_slots = list(enumerate(device_groups(gpus, parallel)))
    if gpus and len(gpus) % parallel and len(gpus) > parallel:
        logging.warning("%d GPUs, %d runs at a time: %d GPUs stay idle", len(gpus), parallel, len(gpus) % parallel)
    queue, running = list(todo), {}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        while queue or running:
            while queue and len(running) < parallel:
                i, run = queue.pop(0)
                slot, devices = free_slots.pop(0)
                log_path = os.path.join(log_dir, f"{run.name}.log")
                logging.info("run %d/%d: %s started (its log: %s)", i, total, run.name, log_path)
                with open(log_path, "w") as log:
                    proc = subprocess.Popen(
                        [*command, *run_flags(run, base_overrides)],
                        env={**env, **devices},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running[proc] = (run, log_path, (slot, devices))
                run.mark_running(proc.pid)
                if devices:
                    run.devices = devices
                manifest.save()
            for proc in [p for p in running if p.poll() is not None]:
                run, log_path, slot = running.pop(proc)
                free_slots.append(slot)
                run.finish(proc.returncode, log_path)
                manifest.save()
                done = sum(r.status in ("complete", "failed") for _, r in todo)
                logging.info(
                    "run %s: %s (%d of %d finished, %d running; its log: %s)",
                    run.name,
                    run.status,
                    done,
                    len(todo),
                    len(running),
                    log_path,
                )
            time.sleep(0.2)
    except BaseException as e:
        try:
            _stop(running)
        finally:
            manifest.save()
        if isinstance(e, KeyboardInterrupt):
            stopped = [run.name for run, *_ in running.values() if run.status == "interrupted"]
            raise KeyboardInterrupt(
                f"Ctrl-C: stopped the sweep and its {len(stopped)} running runs ({', '.join(stopped) or 'none'}); "
                "run the same command again to resume them"
            ) from e
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop(running: dict[subprocess.Popen, tuple]) -> None:
    """SIGTERMs the running runs (each saves a checkpoint after its current step and exits), waits for them and
    says what each saved. A Ctrl-C meanwhile (the user's second) is passed on as SIGINT: they stop at once."""
    for proc, (run, *_) in running.items():
        proc.terminate()
        run.status = "interrupted"
    try:
        for proc in running:
            proc.wait()
    except KeyboardInterrupt:
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        raise
    for proc, (run, log_path, _) in running.items():
        if proc.returncode == 0:  # it finished before the signal reached it
            run.status = "complete"
            continue
        with open(log_path, errors="replace") as f:
            saved = re.findall(r"saved checkpoint (\d+)", f.read())
        said = f"saved checkpoint {saved[-1]}" if saved else "saved nothing new: it resumes from its latest checkpoint"
        logging.warning(
            "run %s: interrupted (exit status %d), %s; its log: %s", run.name, proc.returncode, said, log_path
        )
