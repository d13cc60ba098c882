"""memdyn command line: ``memdyn <command> [flags]``.

Commands:
  train  --config=<file>.py[:arg] | --config=<name>[:arg] [--config.<field>=<value> ...] --workdir=<dir>
         Train a model; writes config.json, train.csv, examples/ (per-example records), tensorboard/.
  train  ... --dry_run
         Validate, build (or reuse) the data and print the run's summary: parameters, FLOPs per token, mesh and
         shardings, steps per epoch, config fields that differ from base.py, memory per device; train nothing.
  train  ... --init_from=<workdir>[@step]
         Fork: start a new run from another run's checkpoint (e.g. with config.insert.* set).
  train  ... --coordinator=<host:port> --num_processes=N --process_id=i   (or ... --distributed)
         Multi-host: run the same command in N processes (same --workdir, on a shared filesystem); each starts
         the JAX distributed runtime (jax.distributed.initialize) before touching a device: with the three flags
         (process 0 listens on <host:port>), or with --distributed alone by auto-detection (TPU pods, SLURM,
         Open MPI). Every process trains; only process 0 writes the data stores and result files.
  eval   --workdir=<dir> --set=<name> [--step=<S>] [--extract [--prompt_len=32 --num_new=32]]
         [--memsinks_mode=train|all|dropout|exclude [--exclude_set=<set> --exclude_count=<n>]]
         Evaluate a set (validation, special, train, ...) at checkpoint S (default: the latest): per-example
         M(f) and loss in evals/<set>-<S>.csv; with --extract Biderman's k-extractability per example
         (example_id,score,memorized,prefix_match,loss) in evals/<set>-<S>-extract.csv.
  extract --workdir=<dir> [--step=<S>] (--set=<name> | --tokens=<file>.npy | --indexed=<prefix> (--rows=a:b |
         --steps=a:b [--rows_per_step=1024])) [--out=<file>.csv|.parquet] [--score] [--prompt_len=32 --num_new=32]
         [--batch_size=<n>]
         k-extractability of every sequence of a source at checkpoint S (default: the latest): a set of the run
         (train: every training sequence), an int array [sequences, length] in a .npy file, or GPT-NeoX indexed
         data (.idx/.bin; rows, or Pythia's 1024 rows per step). Per sequence: example_id, score (with --score:
         greedy decoding; else NaN), memorized, prefix_match, loss (one teacher-forced pass). Default --out:
         <workdir>/extract/<source>-<S>.csv. Written as it goes; run again with the same flags to resume.
  import-hf --hf_dir=<dir> --workdir=<dir> [--step=<S>]
         Read a local Hugging Face GPT-NeoX checkpoint (Pythia: config.json + *.safetensors, nothing downloaded)
         into a new workdir: config.json (model.size='custom', data.source='imported') and checkpoint S (default
         0: give the checkpoint's training step), which `memdyn extract --tokens/--indexed` scores like any run.
  sweep  --config=<file>.py[:arg] [--config.<field>=<value> ...] --workdir=<sweep dir>
         --sweep=<field>=<v1>,<v2>[,...] [--sweep=...] [--parallel=<k>] [--backend=local]
         Train the cross product of the --sweep values, one workdir per run (<sweep dir>/<field>=<v>,...);
         complete runs are skipped, interrupted ones resume; sweep.json lists the runs and their status. With
         --parallel=k, k runs at a time, each in its own process with its own group of the host's GPUs.
         With --dry_run: validate every run and list it (complete / partial / new), train and write nothing.
  sweep  ... --backend=slurm --gpus_per_node=<G> [--nodes=1] [--partition=<p>] [--account=<a>] [--time=<t>]
         [--cpus_per_task=<c>] [--mem=<m>] [--max_running=<k>] [--sbatch_arg=<--option=value> ...] [--dry_run]
         Submit the runs that are neither complete nor queued as one SLURM job array (<sweep dir>/slurm/);
         each task is `srun` with one `memdyn train --distributed` process per GPU (G=0: CPU runs, one process
         per node), requeued when preempted (SIGTERM), resuming its checkpoint. Submitting again resubmits only
         the runs that failed. --dry_run checks everything and prints the batch script, submitting nothing.
  sweep  ... --backend=tpu --tpu=<TPU VM name> --zone=<zone> [--project=<project>] [--tpu_python=python3]
         [--dry_run]
         Run each unfinished run on every worker of a TPU VM pod (`gcloud compute tpus tpu-vm ssh --worker=all`,
         `memdyn train --distributed`), one run after another; --dry_run prints the commands.
  sweep  status --workdir=<sweep dir>
         Each run of the sweep: done / running / pending / failed / interrupted / not started, its latest
         checkpoint, its SLURM job and log (from the workdirs, sweep.json and the scheduler's queue).
  export (--workdir=<dir> | --sweep=<dir>) --out=<dir>
         Tidy CSVs (train, eval, insertions, examples, eval_examples) of a run, or of all the runs of a sweep
         concatenated with the swept fields as columns.
  analyze memorization (--workdir=<dir> | --sweep=<dir> ...) [--out=<dir>] [--m_from=auto|train_eval|in_step]
         [--taus=0.5,0.7,0.9]
         M(f) after each epoch, T(N, tau) in epochs and updates for each tau, the overfitting point and M(f)
         there, the generalization gap, per run and as means with 95% CIs over seeds: memorization_summary.csv/.md,
         memorization_by_size.csv/.md, memorization_epochs.csv, memorization.png, t_tau.png. Every analysis
         takes --sweep more than once to read the runs of several sweeps together (output in the first).
  analyze learning_rate (--workdir=<dir> | --sweep=<dir> ...) [--out=<dir>] [--taus=0.3,0.5,0.7,0.9]
         T(N, tau) and final M(f) against the peak learning rate per size: the grid, the best rate per size and
         whether it is a U, the spread of T over rates, and the memorization table at the rate chosen per size,
         95% CIs over seeds: learning_rate_runs.csv, learning_rate_grid.csv/.md, learning_rate_shape.csv/.md,
         learning_rate_chosen.csv/.md, learning_rate.png.
  analyze unique_ids (--workdir=<dir> | --sweep=<dir> ...) [--out=<dir>] [--taus=0.5,0.7,0.9]
         Runs of configs/unique_ids.py (data.doc_ids none / control / prefix): M(f) over the same content tokens
         after each epoch, T(N, tau), and differences between conditions paired by seed, 95% CIs:
         unique_ids_epochs.csv, unique_ids_runs.csv, unique_ids_conditions.csv/.md,
         unique_ids_differences.csv/.md, unique_ids.png.
  analyze forgetting (--workdir=<dir> | --sweep=<dir>) [--set=special] [--out=<dir>]
         Forgetting curves of an inserted set against its sham-insertion control (the same fork without the
         inserted updates), the retained trace with 95% CIs over seeds: forgetting_curves.csv,
         forgetting_summary.csv, forgetting_conditions.csv/.md, forgetting_trend.csv, forgetting.png.
  analyze memsinks (--workdir=<dir> | --sweep=<dir>) [--out=<dir>]
         MemSinks runs (configs/memsinks.py) against standard training of the same seed: validation, repeated and
         never-seen losses, the repeated-vs-never-seen gap closed, 95% CIs over seeds: memsinks_conditions.csv/.md,
         memsinks_comparisons.csv, memsinks_summary.csv, memsinks_curves.csv, memsinks_deletion.csv, memsinks.png.
  analyze pos (--workdir=<dir> | --sweep=<dir>) [--out=<dir>]
         Parts of speech (Tirumala et al.): R(p) and R_mem(p) per tag over epochs from the runs' pos.csv, 95% CIs
         over seeds: pos_curves.csv, pos_by_size.csv, pos_final.csv/.md, pos.png.
  analyze predict (--workdir=<dir> | --sweep=<dir>) [--out=<dir>]
         Biderman et al.'s predictable memorization from the runs' `memdyn extract --set=train` files: per seed the
         largest model's last checkpoint is the target; every other (run, checkpoint) predicts it: precision,
         recall, compute 6·N·D, bootstrap 95% CIs over sequences and seeds, the equal-compute view, memorized
         fractions, score distributions and memorization by duplication: predict_*.csv, predict_tables.md,
         predict.png.
  vocab  --config=<file>.py [--config.data.vocab.model_type=unigram|bpe|word --config.data.vocab.size=N]
         --out=<file>.model
         Train a SentencePiece vocabulary on the configured source's training split (tfds or text), offline;
         use it with --config.data.vocab.path=<file>.model (ids: 0 pad, 1 eos, 2 unk, 3 <mask>).
  rows   --workdir=<dir> --step=<S> [--text]
         Print what step S trained, one example per line: `<kind>\t<example_id>[\t<text>]`, kind `train` for
         the step's batch and `insert:<set>:<repeat>` for inserted updates before it.
"""

from __future__ import annotations

import os
import shlex
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # clu pulls in TensorFlow; keep its start-up banner quiet

from absl import app, flags
from ml_collections import config_flags

from memdyn.cli import logs
from memdyn.config import CONFIG_DIR as _CONFIG_DIR
from memdyn.config import config_path

COMMANDS = ("train", "eval", "extract", "import-hf", "rows", "sweep", "export", "analyze", "vocab")
SUMMARIES = {
    "train": "train a run, resume it, or fork one from another run's checkpoint",
    "eval": "evaluate a set (and its k-extractability) at a checkpoint",
    "extract": "k-extractability of every sequence of a set, a .npy array or GPT-NeoX indexed data",
    "import-hf": "a local Hugging Face GPT-NeoX (Pythia) checkpoint as a memdyn workdir",
    "rows": "print the examples a step trained",
    "sweep": "train the cross product of config values, one workdir per run",
    "export": "tidy CSVs of a run or a whole sweep",
    "analyze": "memorization, learning_rate, unique_ids, forgetting, memsinks, pos or predict analyses, "
    "with CIs over seeds",
    "vocab": "train a SentencePiece vocabulary offline",
}


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
    """One line naming the mistyped ``--config.<field>`` (ml_collections raises with a did-you-mean hint)."""
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    key, _, hint = text.partition("\n")
    key = key.strip("'\"")
    flag = next(
        (a.split("=", 1)[0] for a in argv if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")),
        f"--config.…{key}",
    )
    return f"memdyn: error: {flag}: unknown config field {key!r}" + (f" ({hint.strip()})" if hint else "")


try:  # config_flags reads the --config.<field> overrides of sys.argv here, when the flag is defined
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        os.path.join(_CONFIG_DIR, "base.py"),
        "Experiment config: a file <path>.py[:arg] or a packaged "
        "config by name (base, memorization, forgetting, memsinks, text, tfds_synthetic, seqio_task)[:arg].",
    )
except (AttributeError, KeyError) as _error:
    print(_unknown_field_message(_error, sys.argv), file=sys.stderr)
    sys.exit(2)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: config, CSVs, records, checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Training step (0-based update index) for `rows`.")
_TEXT = flags.DEFINE_bool("text", False, "`rows`: also print each example's decoded text.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep",
    [],
    "`sweep`: <field>=<v1>,<v2>,... (repeat the flag for a cross product); "
    "`export`/`analyze`: the directory of a sweep's runs.",
)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "`sweep`: runs at a time (each in its own process when > 1).")
_BACKEND = flags.DEFINE_enum(
    "backend",
    "local",
    ["local", "slurm", "tpu"],
    "`sweep`: where the runs train: this host, a SLURM job array, or every worker of a TPU VM pod.",
)
_GPUS_PER_NODE = flags.DEFINE_integer(
    "gpus_per_node", None, "`sweep --backend=slurm`: GPUs per node of each run, one process each (0: CPU runs)."
)
_NODES = flags.DEFINE_integer("nodes", 1, "`sweep --backend=slurm`: nodes per run.")
_PARTITION = flags.DEFINE_string("partition", None, "`sweep --backend=slurm`: the SLURM partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "`sweep --backend=slurm`: the SLURM account.")
_TIME = flags.DEFINE_string("time", None, "`sweep --backend=slurm`: time limit per run (SLURM format, e.g. 4:00:00).")
_CPUS_PER_TASK = flags.DEFINE_integer("cpus_per_task", None, "`sweep --backend=slurm`: CPUs per process.")
_MEM = flags.DEFINE_string("mem", None, "`sweep --backend=slurm`: memory per node (SLURM format, e.g. 64G).")
_MAX_RUNNING = flags.DEFINE_integer("max_running", None, "`sweep --backend=slurm`: array tasks running at once.")
_SBATCH_ARG = flags.DEFINE_multi_string(
    "sbatch_arg", [], "`sweep --backend=slurm`: a further #SBATCH option, e.g. --sbatch_arg=--qos=high (repeatable)."
)
_TPU = flags.DEFINE_string("tpu", None, "`sweep --backend=tpu`: the TPU VM's name.")
_ZONE = flags.DEFINE_string("zone", None, "`sweep --backend=tpu`: the TPU VM's zone.")
_PROJECT = flags.DEFINE_string("project", None, "`sweep --backend=tpu`: the Google Cloud project.")
_TPU_PYTHON = flags.DEFINE_string(
    "tpu_python", "python3", "`sweep --backend=tpu`: the workers' Python, with memdyn installed."
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "`export`/`analyze`: output directory (default: --workdir or --sweep); "
    "`vocab`: the SentencePiece model file to write; `extract`: the .csv/.parquet file.",
)
_SET = flags.DEFINE_string(
    "set",
    None,
    "`eval`, `extract`: the set to evaluate (a tracked set or `train`); "
    "`analyze forgetting`: the inserted set (default special).",
)
_M_FROM = flags.DEFINE_enum(
    "m_from",
    "auto",
    ["auto", "train_eval", "in_step"],
    "`analyze memorization`: M(f) from whole-training-set evaluations at epoch ends "
    "(train_eval), from the per-example records of the train steps (in_step), or the "
    "first when the run has them (auto).",
)
_TAUS = flags.DEFINE_list(
    "taus",
    None,
    "`analyze memorization|learning_rate|unique_ids`: the thresholds tau of "
    "T(N, tau), comma-separated (default: the analysis's own).",
)
_EXTRACT = flags.DEFINE_bool("extract", False, "`eval`: also k-extractability (causal LMs).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "`eval --extract`, `extract`: prompt tokens M.")
_NUM_NEW = flags.DEFINE_integer("num_new", 32, "`eval --extract`, `extract`: greedy tokens N scored.")
_TOKENS = flags.DEFINE_string("tokens", None, "`extract`: a .npy integer array [sequences, length] to score.")
_INDEXED = flags.DEFINE_string("indexed", None, "`extract`: GPT-NeoX indexed data, the path without .idx/.bin.")
_ROWS = flags.DEFINE_string("rows", None, "`extract --indexed`: sequences a:b (0-based, b excluded).")
_STEPS = flags.DEFINE_string(
    "steps", None, "`extract --indexed`: the rows of training steps a:b (--rows_per_step rows each)."
)
_ROWS_PER_STEP = flags.DEFINE_integer("rows_per_step", 1024, "`extract --steps`: rows per step (Pythia: 1024).")
_SCORE = flags.DEFINE_bool("score", False, "`extract`: also Biderman's fractional score by greedy decoding.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "`import-hf`: a local Hugging Face GPT-NeoX checkpoint directory.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "`extract`: sequences per batch (default: the run's).")
_MEMSINKS_MODE = flags.DEFINE_enum(
    "memsinks_mode",
    "train",
    ["train", "all", "dropout", "exclude"],
    "`eval` of a MemSinks run: the MLP gates (train: each sequence's own mask; "
    "all: pool x p_mem; dropout: sinks dropped; exclude: --exclude_set's units off).",
)
_EXCLUDE_SET = flags.DEFINE_string(
    "exclude_set", None, "`eval --memsinks_mode=exclude`: the set whose sequences' sink units are switched off."
)
_EXCLUDE_COUNT = flags.DEFINE_integer(
    "exclude_count", None, "`eval --memsinks_mode=exclude`: only the first n sequences of --exclude_set."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "`train`: validate, build (or reuse) the data, print the run's "
    "summary (parameters, FLOPs, mesh, steps per epoch, memory per device), train nothing. "
    "`sweep`: validate every run and list it with its status, train nothing.",
)
_INIT_FROM = flags.DEFINE_string(
    "init_from",
    None,
    "`train`: start from another run's checkpoint, "
    "<workdir>[@step] (the latest when no step); same as --config.init_from.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator",
    None,
    "`train` multi-host: <host:port> of process 0's coordinator (with --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "`train` multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "`train` multi-host: this process's index, 0..N-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "`train` multi-host: jax.distributed.initialize() with auto-detection (TPU pods, SLURM, Open MPI).",
)


def _require(flag, command: str):
    if flag.value is None:
        raise app.UsageError(f"`memdyn {command}` needs --{flag.name}")
    return flag.value


def init_distributed(command: str) -> None:
    """Starts the JAX distributed runtime when the multi-host flags ask for it (before anything touches a device)."""
    explicit = {f.name: f.value for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)}
    given = [name for name, value in explicit.items() if value is not None]
    if not given and not _DISTRIBUTED.value:
        return
    if command != "train":
        raise app.UsageError(
            f"`memdyn {command}` runs in one process; the multi-host flags (--distributed, "
            "--coordinator, --num_processes, --process_id) are for `memdyn train`"
        )
    if _DISTRIBUTED.value and given:
        raise app.UsageError("--distributed (auto-detection) excludes --coordinator/--num_processes/--process_id")
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
        return
    if len(given) != 3:
        missing = sorted(set(explicit) - set(given))
        raise app.UsageError(
            "--coordinator, --num_processes and --process_id go together; missing "
            + ", ".join(f"--{name}" for name in missing)
        )
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
        raise app.UsageError(f"--process_id={_PROCESS_ID.value} must be in [0, --num_processes={_NUM_PROCESSES.value})")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def cmd_train() -> None:
    from memdyn.train import job as lifecycle

    config = _CONFIG.value
    if _INIT_FROM.value:
        with config.unlocked():
            config.init_from = _INIT_FROM.value
    lifecycle.train(config, _require(_WORKDIR, "train"), dry_run=_DRY_RUN.value)


def cmd_rows() -> None:
    from memdyn.data import run_data
    from memdyn.data.order import PADDING_ROW, StepOrder
    from memdyn.rundir import runs
    from memdyn.train import insertion

    workdir, step = _require(_WORKDIR, "rows"), _require(_STEP, "rows")
    config = runs.load_config(workdir)
    if not 0 <= step < config.num_steps:
        raise ValueError(f"--step={step} is outside the run's steps [0, {config.num_steps})")
    data = run_data.open_run_data(workdir, config)
    order = StepOrder(data.train.num_examples, config.batch_size, config.data.order_seed)
    batches = []
    if step in insertion.insertion_steps(config.insert, config.num_steps) and not config.insert.sham:
        inserted = data.sets[config.insert.set]
        batches += [
            (f"insert:{config.insert.set}:{r}", inserted.rows(np.arange(inserted.num_examples)))
            for r in range(config.insert.repeats)
        ]
    rows = order.rows(step)
    batches.append(("train", data.train.rows(rows[rows != PADDING_ROW])))
    for kind, rows in batches:
        for example_id, tokens in zip(rows["example_ids"], rows["tokens"]):
            text = f"\t{data.decode(tokens)}" if _TEXT.value else ""
            print(f"{kind}\t{example_id}{text}")


def cmd_vocab() -> None:
    from memdyn.data.build import sources as build_sources

    out = _require(_OUT, "vocab")
    vocabulary = build_sources.train_vocabulary_file(_CONFIG.value, out)
    print(f"wrote {out}: {vocabulary.vocab_size} ids ({_CONFIG.value.data.vocab.model_type})")


def cmd_eval() -> None:
    from memdyn.extraction import eval_checkpoint

    aggregates = eval_checkpoint.evaluate_checkpoint(
        _require(_WORKDIR, "eval"),
        _require(_SET, "eval"),
        _STEP.value,
        extract_k=_EXTRACT.value,
        prompt_len=_PROMPT_LEN.value,
        num_new=_NUM_NEW.value,
        memsinks_mode=_MEMSINKS_MODE.value,
        exclude_set=_EXCLUDE_SET.value,
        exclude_count=_EXCLUDE_COUNT.value,
    )
    print("\n".join(f"{k}: {v}" for k, v in aggregates.items()))


def cmd_extract() -> None:
    from memdyn.extraction import extract_job

    totals = extract_job.run_extract(
        _require(_WORKDIR, "extract"),
        _STEP.value,
        out=_OUT.value,
        set_name=_SET.value,
        tokens=_TOKENS.value,
        indexed=_INDEXED.value,
        rows=_ROWS.value,
        steps=_STEPS.value,
        rows_per_step=_ROWS_PER_STEP.value,
        prompt_len=_PROMPT_LEN.value,
        num_new=_NUM_NEW.value,
        score=_SCORE.value,
        batch_size=_BATCH_SIZE.value,
    )
    keys = ("out", "step", "scored", "left_out", "memorized_fraction", "mean_score", "mean_loss")
    print("\n".join(f"{k}: {totals[k]}" for k in keys))


def cmd_import_hf() -> None:
    from memdyn.extraction import import_hf

    summary = import_hf.import_hf(_require(_HF_DIR, "import-hf"), _require(_WORKDIR, "import-hf"), _STEP.value or 0)
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))


def _run_or_sweep(command: str) -> tuple[str | None, str | None]:
    sweep_dir = _SWEEP.value[0] if _SWEEP.value else None
    if bool(_WORKDIR.value) == bool(sweep_dir) or len(_SWEEP.value) > 1:
        raise app.UsageError(f"`memdyn {command}` needs exactly one of --workdir or --sweep=<dir>")
    return _WORKDIR.value, sweep_dir


def cmd_sweep(what: str = "") -> None:
    from memdyn.sweeps import slurm, sweep, tpu

    if what == "status":
        rows = sweep.sweep_status(_require(_WORKDIR, "sweep status"))
        for row in rows:
            step = "-" if row["step"] is None else row["step"]
            print(
                f"{row['status']:>11}  {row['name']}  step {step}/{row['num_steps'] or '?'}"
                + (f"  job {row['job']}" if row["job"] else "")
                + (f"  {row['log']}" if row["log"] else "")
            )
        counts = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        print(f"{len(rows)} runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        return
    if what:
        raise app.UsageError(f"unexpected arguments {[what]!r} (`memdyn sweep status` is the only subcommand)")
    if not _SWEEP.value:
        raise app.UsageError("`memdyn sweep` needs at least one --sweep=<field>=<v1>,<v2>,...")
    path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    sweep_dir = _require(_WORKDIR, "sweep")
    slurm_flags = [
        f
        for f in (_GPUS_PER_NODE, _PARTITION, _ACCOUNT, _TIME, _CPUS_PER_TASK, _MEM, _MAX_RUNNING)
        if f.value is not None
    ] + [f for f in (_NODES, _SBATCH_ARG) if f.present]
    tpu_flags = [f for f in (_TPU, _ZONE, _PROJECT) if f.value is not None] + (
        [_TPU_PYTHON] if _TPU_PYTHON.present else []
    )
    for backend, given in (("slurm", slurm_flags), ("tpu", tpu_flags)):
        if given and _BACKEND.value != backend:
            raise app.UsageError(f"--{given[0].name} is a flag of --backend={backend}, not --backend={_BACKEND.value}")
    if _BACKEND.value != "local" and _PARALLEL.present:
        raise app.UsageError(
            f"--parallel is for --backend=local; --backend={_BACKEND.value} runs every run as its own job"
        )
    if _BACKEND.value == "slurm":
        resources = slurm.Resources(
            gpus_per_node=_GPUS_PER_NODE.value,
            nodes=_NODES.value,
            partition=_PARTITION.value,
            account=_ACCOUNT.value,
            time=_TIME.value,
            cpus_per_task=_CPUS_PER_TASK.value,
            mem=_MEM.value,
            max_running=_MAX_RUNNING.value,
            sbatch_args=tuple(_SBATCH_ARG.value),
        )
        out = sweep.submit_slurm(
            path, arg or None, sweep_dir, _SWEEP.value, overrides, resources, dry_run=_DRY_RUN.value
        )
        if _DRY_RUN.value and out["script"]:
            print(out["script"])
        for run in out["runs"]:
            print(f"{run['status']:>11}  {run['name']}" + (f"  job {run['slurm_job']}" if run.get("slurm_job") else ""))
        if _DRY_RUN.value:
            print(
                "nothing submitted (--dry_run); SLURM accepts the script (sbatch --test-only)"
                if out["script"]
                else "nothing to submit: every run is complete or queued"
            )
        else:
            print(
                f"submitted array {out['array_id']}: {out['script']}"
                if out["array_id"]
                else "nothing to submit: every run is complete or queued"
            )
        return
    if _BACKEND.value == "tpu":
        pod = tpu.Pod(name=_TPU.value, zone=_ZONE.value, project=_PROJECT.value, python=_TPU_PYTHON.value)
        runs = sweep.run_tpu(path, arg or None, sweep_dir, _SWEEP.value, overrides, pod, dry_run=_DRY_RUN.value)
        for run in runs:
            print(f"{run['status']:>11}  {run['name']}")
            if _DRY_RUN.value and run["status"] != "skipped":
                print("  " + " ".join(shlex.quote(a) for a in run["command"]))
        return
    if _DRY_RUN.value:
        planned = sweep.plan_sweep(path, arg or None, sweep_dir, _SWEEP.value, overrides)
        for run in planned:
            print(
                f"{run['status']:>9}  {run['name']}  ({run['config'].num_steps} steps, model "
                f"{run['config'].model.size}, seed {run['config'].seed})"
            )
        print(f"{len(planned)} runs, all valid; nothing trained (`memdyn train --dry_run` details one run)")
        return
    runs = sweep.run_sweep(
        path, arg or None, sweep_dir, _SWEEP.value, base_overrides=overrides, parallel=_PARALLEL.value
    )
    for run in runs:
        print(f"{run['status']:>11}  {run['name']}")


def cmd_export() -> None:
    from memdyn.rundir import export

    workdir, sweep_dir = _run_or_sweep("export")
    out = _require(_OUT, "export")
    written = export.export_run(workdir, out) if workdir else export.export_sweep(sweep_dir, out)
    print("\n".join(f"{name}: {path}" for name, path in written.items()))


def cmd_analyze(what: str) -> None:
    from memdyn import studies as analysis
    from memdyn.rundir import runs

    registry = analysis.analyses()
    if what not in registry:
        raise app.UsageError(f"`memdyn analyze` needs one of {tuple(registry)}; got {what!r}")
    if bool(_WORKDIR.value) == bool(_SWEEP.value):
        raise app.UsageError(f"`memdyn analyze {what}` needs --workdir or --sweep=<dir> (repeatable), not both")
    if _WORKDIR.value:
        runs.load_config(_WORKDIR.value)  # a clear error when it holds no run
    workdirs = [_WORKDIR.value] if _WORKDIR.value else [r.workdir for d in _SWEEP.value for r in runs.require_runs(d)]
    out = _OUT.value or _WORKDIR.value or _SWEEP.value[0]
    summary = registry[what].run(
        analysis.Options(workdirs, out, set_name=_SET.value, m_from=_M_FROM.value, taus=_parse_taus(_TAUS.value))
    )
    print(summary.to_string(index=False))
    print(f"wrote {registry[what].outputs} in {out}")


def _parse_taus(values: list[str] | None) -> tuple[float, ...] | None:
    if not values:
        return None
    try:
        taus = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--taus={','.join(values)}: expected comma-separated numbers in (0, 1]") from None
    if not all(0 < t <= 1 for t in taus):
        raise ValueError(f"--taus={','.join(values)}: every tau must be in (0, 1]")
    return taus


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: memdyn <{'|'.join(COMMANDS)}> [flags]; got {argv[1:]!r}. `memdyn --helpfull` lists every flag."
        )
    positional = argv[3:] if argv[1] in ("analyze", "sweep") else argv[2:]
    if positional:
        raise app.UsageError(f"unexpected arguments {positional!r}")
    _check_command_flags(argv[1], sys.argv[1:])
    logs.configure()
    init_distributed(argv[1])
    try:
        if argv[1] in ("analyze", "sweep"):
            {"analyze": cmd_analyze, "sweep": cmd_sweep}[argv[1]](argv[2] if len(argv) > 2 else "")
        else:
            {
                "train": cmd_train,
                "eval": cmd_eval,
                "extract": cmd_extract,
                "import-hf": cmd_import_hf,
                "rows": cmd_rows,
                "sweep": cmd_sweep,
                "export": cmd_export,
                "vocab": cmd_vocab,
            }[argv[1]]()
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # Bad input (a flag, a config value, a file): say what, without a traceback.
        if os.environ.get("MEMDYN_TRACEBACK"):
            raise
        print(f"memdyn {argv[1]}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        from memdyn.train.loop import Preempted

        if not isinstance(e, Preempted):
            raise
        # SIGTERM: the checkpoint is saved; say so in one line and exit as a terminated process does (128 + 15)
        print(f"memdyn {argv[1]}: {e}", file=sys.stderr)
        sys.exit(143)


def _packaged_configs(argv: list[str]) -> list[str]:
    """``--config=<name>[:arg]`` (or ``--config <name>``) of a packaged config becomes its file path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


def _command_blocks() -> dict[str, list[str]]:
    """Each command's usage blocks (usage line + description) from this module's docstring."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in __doc__.split("Commands:\n", 1)[1].splitlines():
        words = line.split()
        if line.startswith("  ") and not line.startswith("   ") and words and words[0] in COMMANDS:
            current = blocks.setdefault(words[0], [])
            current.append(line)
        elif current is not None and line.strip():
            current[-1] += "\n" + line
    return blocks


def _check_command_flags(command: str, args: list[str]) -> None:
    """Refuses a memdyn flag that the command does not take (absl flags are global): the flags a command takes
    are the ones its usage block in this module's docstring names."""
    import re

    blocks, label = _command_blocks()[command], command
    if command in ("analyze", "sweep"):  # each analysis (and `sweep status`) takes the flags of its own block
        sub = next((a for a in args[1:] if not a.startswith("-")), None)
        own_block = [b for b in blocks if b.split()[1] == sub]
        blocks, label = (own_block, f"{command} {sub}") if own_block else (blocks, command)
    allowed = set(re.findall(r"--([a-z_]+)", "\n".join(blocks)))
    own = {flag.name for flag in flags.FLAGS.get_flags_for_module(__name__)} | {"config"}
    for arg in args:
        if not arg.startswith("-"):
            continue
        name = arg.lstrip("-").split("=", 1)[0].split(".", 1)[0]
        if name.startswith("no") and name[2:] in own and name not in own:  # --noextract
            name = name[2:]
        if name in own and name not in allowed:
            raise app.UsageError(
                f"--{name} is not a flag of `memdyn {label}` (its flags: "
                f"{', '.join('--' + f for f in sorted(allowed))}; see `memdyn {command} --help`)"
            )


def _help_or_version(argv: list[str]) -> str | None:
    """The text ``--help`` / ``--version`` (or no command at all) asks for; None when the command should run."""
    from memdyn import __version__

    asked = {"--help", "-h", "--helpshort"} & set(argv[1:])
    if "--version" in argv[1:]:
        return f"memdyn {__version__}"
    blocks = _command_blocks()
    if len(argv) > 1 and argv[1] in blocks and asked:
        return f"usage of `memdyn {argv[1]}`:\n\n" + "\n".join(blocks[argv[1]])
    if len(argv) == 1 or (asked and argv[1].startswith("-")):
        lines = [f"  {name:<8} {SUMMARIES[name]}" for name in COMMANDS]
        return (
            "usage: memdyn <command> [flags]   (memdyn <command> --help for a command's flags)\n\n"
            "commands:\n" + "\n".join(lines)
        )
    return None


def run() -> None:
    """Console-script entry point."""
    text = _help_or_version(sys.argv)
    if text is not None:
        print(text)
        sys.exit(0)
    app.run(main, argv=_packaged_configs(sys.argv))


if __name__ == "__main__":
    run()
