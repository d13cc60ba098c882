"""``memdyn sweep``: train the cross product of config values, one workdir per run, on this host, a SLURM cluster
or a TPU VM pod; ``memdyn sweep status``: where each run of a sweep stands."""

from __future__ import annotations

import shlex

from memdyn.cli.command import CONFIG, Args, Command, Flag, Usage, UsageError

SLURM = "`--backend=slurm`: "
TPU = "`--backend=tpu`: "

LOCAL_FLAGS = (
    CONFIG,
    Flag("workdir", str, None, "The sweep's directory: one workdir per run, and sweep.json.", required=True),
    Flag(
        "sweep",
        str,
        [],
        "<field>=<v1>,<v2>,... (repeat the flag for a cross product).",
        repeatable=True,
    ),
    Flag("parallel", int, 1, "Runs at a time (each in its own process, with its own GPUs, when > 1)."),
    Flag(
        "backend",
        str,
        "local",
        "Where the runs train: this host, a SLURM job array, or every worker of a TPU VM pod.",
        choices=("local", "slurm", "tpu"),
    ),
    Flag(
        "dry_run",
        bool,
        False,
        "Validate every run and list it with its status (complete / partial / new); train and write nothing "
        "(SLURM, TPU: print the batch script or the commands).",
    ),
)
SLURM_FLAGS = (
    Flag("gpus_per_node", int, None, SLURM + "GPUs per node of each run, one process each (0: CPU runs)."),
    Flag("nodes", int, 1, SLURM + "nodes per run."),
    Flag("partition", str, None, SLURM + "the SLURM partition."),
    Flag("account", str, None, SLURM + "the SLURM account."),
    Flag("time", str, None, SLURM + "time limit per run (SLURM format, e.g. 4:00:00)."),
    Flag("cpus_per_task", int, None, SLURM + "CPUs per process."),
    Flag("mem", str, None, SLURM + "memory per node (SLURM format, e.g. 64G)."),
    Flag("max_running", int, None, SLURM + "array tasks running at once."),
    Flag(
        "sbatch_arg",
        str,
        [],
        SLURM + "a further #SBATCH option, e.g. --sbatch_arg=--qos=high.",
        repeatable=True,
    ),
)
TPU_FLAGS = (
    Flag("tpu", str, None, TPU + "the TPU VM's name."),
    Flag("zone", str, None, TPU + "the TPU VM's zone."),
    Flag("project", str, None, TPU + "the Google Cloud project."),
    Flag("tpu_python", str, "python3", TPU + "the workers' Python, with memdyn installed."),
)

USAGES = (
    Usage(
        "memdyn sweep --config=<file>.py[:arg] [--config.<field>=<value> ...] --workdir=<sweep dir> "
        "--sweep=<field>=<v1>,<v2>[,...] [--sweep=...] [--parallel=<k>] [--backend=local] [--dry_run]",
        "Train the cross product of the --sweep values, one workdir per run (<sweep dir>/<field>=<v>,...); "
        "complete runs are skipped, interrupted ones resume; sweep.json lists the runs and their status. With "
        "--parallel=k, k runs at a time, each in its own process with its own group of the host's GPUs. With "
        "--dry_run: validate every run and list it (complete / partial / new), train and write nothing.",
    ),
    Usage(
        "memdyn sweep ... --backend=slurm --gpus_per_node=<G> [--nodes=1] [--partition=<p>] [--account=<a>] "
        "[--time=<t>] [--cpus_per_task=<c>] [--mem=<m>] [--max_running=<k>] [--sbatch_arg=<--option=value> ...] "
        "[--dry_run]",
        "Submit the runs that are neither complete nor queued as one SLURM job array (<sweep dir>/slurm/); each "
        "task is `srun` with one `memdyn train` process per GPU (G=0: CPU runs, one process per node), requeued "
        "when preempted (SIGTERM), resuming its checkpoint. Submitting again resubmits only the runs that failed. "
        "--dry_run checks everything and prints the batch script, submitting nothing.",
    ),
    Usage(
        "memdyn sweep ... --backend=tpu --tpu=<TPU VM name> --zone=<zone> [--project=<project>] "
        "[--tpu_python=python3] [--dry_run]",
        "Run each unfinished run on every worker of a TPU VM pod (`gcloud compute tpus tpu-vm ssh --worker=all`, "
        "`memdyn train` with its distributed runtime), one run after another; --dry_run prints the commands.",
    ),
)


def _check_backend_flags(args: Args) -> None:
    """A flag of another backend, or --parallel off this host, is refused before anything runs."""
    slurm = [f.name for f in SLURM_FLAGS if args.given(f.name)]
    tpu = [f.name for f in TPU_FLAGS if args.given(f.name)]
    for backend, given in (("slurm", slurm), ("tpu", tpu)):
        if given and args.backend != backend:
            raise UsageError(f"--{given[0]} is a flag of --backend={backend}, not --backend={args.backend}")
    if args.backend != "local" and args.given("parallel"):
        raise UsageError(f"--parallel is for --backend=local; --backend={args.backend} runs every run as its own job")


def run(args: Args) -> None:
    from ml_collections import config_flags

    from memdyn import sweeps
    from memdyn.sweeps import slurm, tpu

    if not args.sweep:
        raise UsageError("`memdyn sweep` needs at least one --sweep=<field>=<v1>,<v2>,...")
    path, _, arg = config_flags.get_config_filename(args.config_flag).partition(":")
    overrides = config_flags.get_override_values(args.config_flag)
    _check_backend_flags(args)
    if args.backend == "slurm":
        resources = slurm.Resources(
            gpus_per_node=args.gpus_per_node,
            nodes=args.nodes,
            partition=args.partition,
            account=args.account,
            time=args.time,
            cpus_per_task=args.cpus_per_task,
            mem=args.mem,
            max_running=args.max_running,
            sbatch_args=tuple(args.sbatch_arg),
        )
        out = sweeps.submit_slurm(
            path, arg or None, args.workdir, args.sweep, overrides, resources, dry_run=args.dry_run
        )
        if args.dry_run and out.script:
            print(out.script)
        for run in out.runs:
            print(f"{run.status:>11}  {run.name}" + (f"  job {run.slurm_job}" if run.slurm_job else ""))
        nothing = "nothing to submit: every run is complete or queued"
        if args.dry_run:
            print(
                "nothing submitted (--dry_run); SLURM accepts the script (sbatch --test-only)"
                if out.script
                else nothing
            )
        else:
            print(f"submitted array {out.array_id}: {out.script}" if out.array_id else nothing)
        return
    if args.backend == "tpu":
        pod = tpu.Pod(name=args.tpu, zone=args.zone, project=args.project, python=args.tpu_python)
        runs = sweeps.run_tpu(path, arg or None, args.workdir, args.sweep, overrides, pod, dry_run=args.dry_run)
        for run in runs:
            print(f"{run.status:>11}  {run.name}")
            if args.dry_run and run.status != "skipped":
                print("  " + " ".join(shlex.quote(a) for a in run.command))
        return
    if args.dry_run:
        planned = sweeps.plan_sweep(path, arg or None, args.workdir, args.sweep, overrides)
        for run in planned:
            print(
                f"{run.status:>9}  {run.name}  ({run.config.num_steps} steps, model "
                f"{run.config.model.size}, seed {run.config.seed})"
            )
        print(f"{len(planned)} runs, all valid; nothing trained (`memdyn train --dry_run` details one run)")
        return
    runs = sweeps.run_sweep(
        path, arg or None, args.workdir, args.sweep, base_overrides=overrides, parallel=args.parallel
    )
    for run in runs:
        print(f"{run.status:>11}  {run.name}")


def run_status(args: Args) -> None:
    from memdyn import sweeps

    rows = sweeps.sweep_status(args.workdir)
    for row in rows:
        step = "-" if row.step is None else row.step
        print(
            f"{row.status:>11}  {row.name}  step {step}/{row.num_steps or '?'}"
            + (f"  job {row.job}" if row.job else "")
            + (f"  {row.log}" if row.log else "")
        )
    counts = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    print(f"{len(rows)} runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


STATUS = Command(
    "sweep status",
    "where each run of a sweep stands",
    (
        Usage(
            "memdyn sweep status --workdir=<sweep dir>",
            "Each run of the sweep: done / running / pending / failed / interrupted / not started, its latest "
            "checkpoint, its SLURM job and log (from the workdirs, sweep.json and the scheduler's queue).",
        ),
    ),
    (Flag("workdir", str, None, "The sweep's directory.", required=True),),
    run_status,
)

COMMAND = Command(
    "sweep",
    "train the cross product of config values, one workdir per run",
    USAGES,
    LOCAL_FLAGS + SLURM_FLAGS + TPU_FLAGS,
    run,
    subcommands=lambda: {"status": STATUS},
)
