"""``memdyn train``: train a run, resume it, or fork one from another run's checkpoint; multi-host with the
distributed flags. The config is resolved and validated once, in ``memdyn.train.job.train``."""

from __future__ import annotations

from memdyn.cli.command import CONFIG, Args, Command, Flag, Usage, UsageError

MULTI_HOST = ("coordinator", "num_processes", "process_id")

FLAGS = (
    CONFIG,
    Flag("workdir", str, None, "Directory of the run: config, CSVs, records, checkpoints.", required=True),
    Flag(
        "dry_run",
        bool,
        False,
        "Validate, build (or reuse) the data, print the run's summary (parameters, FLOPs, mesh, steps per epoch, "
        "memory per device), train nothing.",
    ),
    Flag(
        "init_from",
        str,
        None,
        "Start from another run's checkpoint, <workdir>[@step] (the latest when no step); same as --config.init_from.",
    ),
    Flag(
        "coordinator",
        str,
        None,
        "Multi-host: <host:port> of process 0's coordinator (with --num_processes and --process_id).",
    ),
    Flag("num_processes", int, None, "Multi-host: number of processes."),
    Flag("process_id", int, None, "Multi-host: this process's index, 0..N-1."),
    Flag(
        "distributed",
        bool,
        False,
        "Multi-host: jax.distributed.initialize() with auto-detection (TPU pods, SLURM, Open MPI).",
    ),
)

USAGES = (
    Usage(
        "memdyn train --config=<file>.py[:arg] | --config=<name>[:arg] [--config.<field>=<value> ...] --workdir=<dir>",
        "Train a model; writes config.json, train.csv, examples/ (per-example records), tensorboard/. A workdir "
        "that holds the run resumes it from its latest checkpoint; a finished run is left alone.",
    ),
    Usage(
        "memdyn train ... --dry_run",
        "Validate, build (or reuse) the data and print the run's summary: parameters, FLOPs per token, mesh and "
        "shardings, steps per epoch, config fields that differ from base.py, memory per device; train nothing.",
    ),
    Usage(
        "memdyn train ... --init_from=<workdir>[@step]",
        "Fork: start a new run from another run's checkpoint (e.g. with config.insert.* set).",
    ),
    Usage(
        "memdyn train ... --coordinator=<host:port> --num_processes=N --process_id=i   (or ... --distributed)",
        "Multi-host: run the same command in N processes (same --workdir, on a shared filesystem); each starts the "
        "JAX distributed runtime (jax.distributed.initialize) before touching a device: with the three flags "
        "(process 0 listens on <host:port>), or with --distributed alone by auto-detection (TPU pods, SLURM, Open "
        "MPI). Every process trains; only process 0 writes the data stores and result files.",
    ),
)


def init_distributed(args: Args) -> None:
    """Starts the JAX distributed runtime when the multi-host flags ask for it (before anything touches a device)."""
    given = [name for name in MULTI_HOST if getattr(args, name) is not None]
    if not given and not args.distributed:
        return
    if args.distributed and given:
        raise UsageError("--distributed (auto-detection) excludes --coordinator/--num_processes/--process_id")
    import jax

    if args.distributed:
        jax.distributed.initialize()
        return
    if len(given) != len(MULTI_HOST):
        missing = sorted(set(MULTI_HOST) - set(given))
        raise UsageError(
            "--coordinator, --num_processes and --process_id go together; missing "
            + ", ".join(f"--{name}" for name in missing)
        )
    if not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process_id={args.process_id} must be in [0, --num_processes={args.num_processes})")
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)


def run(args: Args) -> None:
    init_distributed(args)
    from memdyn.train import job

    config = args.config
    if args.init_from:
        with config.unlocked():
            config.init_from = args.init_from
    job.train(config, args.workdir, dry_run=args.dry_run)


COMMAND = Command("train", "train a run, resume it, or fork one from another run's checkpoint", USAGES, FLAGS, run)
