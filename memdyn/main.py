"""memdyn command line: ``memdyn <command> [flags]``.

Commands:
  train  --config=configs/<file>.py[:arg] [--config.<field>=<value> ...] --workdir=<dir>
         Train a model; writes config.json, train.csv, examples/ (per-example records), tensorboard/.
  train  ... --init_from=<workdir>[@step]
         Fork: start a new run from another run's checkpoint (e.g. with config.insert.* set).
  eval   --workdir=<dir> --set=<name> [--step=<S>] [--extract [--prompt_len=32 --num_new=32]]
         Evaluate a set (validation, special, train, ...) at checkpoint S (default: the latest): per-example
         M(f) and loss in evals/<set>-<S>.csv; with --extract Biderman's k-extractability per example
         (example_id,score,memorized,prefix_match) in evals/<set>-<S>-extract.csv.
  analyze forgetting (--workdir=<dir> | --sweep=<dir>) [--set=special] [--out=<dir>]
         Forgetting curves of an inserted set, the forgetting baseline (minimum after insertion) and the
         asymptote of an exponential fit: forgetting_curves.csv, forgetting_summary.csv, forgetting.png.
  rows   --workdir=<dir> --step=<S> [--text]
         Print what step S trained, one example per line: `<kind>\t<example_id>[\t<text>]`, kind `train` for
         the step's batch and `insert:<set>:<repeat>` for inserted updates before it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # clu pulls in TensorFlow; keep its start-up banner quiet

from absl import app, flags
from ml_collections import config_flags

from memdyn import logs

from memdyn.config import CONFIG_DIR as _CONFIG_DIR
COMMANDS = ("train", "eval", "rows", "analyze")
ANALYSES = ("forgetting",)

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_CONFIG_DIR, "base.py"), "Experiment config file (configs/<name>.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: config, CSVs, records, checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Training step (0-based update index) for `rows`.")
_TEXT = flags.DEFINE_bool("text", False, "`rows`: also print each example's decoded text.")
_SWEEP = flags.DEFINE_string("sweep", None, "`analyze`: a directory of runs (every subdirectory with eval.csv).")
_OUT = flags.DEFINE_string("out", None, "`analyze`: output directory (default: --workdir or --sweep).")
_SET = flags.DEFINE_string("set", None, "`eval`: the set to evaluate (a tracked set or `train`); "
                           "`analyze forgetting`: the inserted set (default special).")
_EXTRACT = flags.DEFINE_bool("extract", False, "`eval`: also k-extractability (causal LMs).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "`eval --extract`: prompt tokens M.")
_NUM_NEW = flags.DEFINE_integer("num_new", 32, "`eval --extract`: greedy tokens N scored.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "`train`: start from another run's checkpoint, "
                                 "<workdir>[@step] (the latest when no step); same as --config.init_from.")


def _require(flag, command: str):
    if flag.value is None:
        raise app.UsageError(f"`memdyn {command}` needs --{flag.name}")
    return flag.value


def cmd_train() -> None:
    from memdyn import train
    config = _CONFIG.value
    if _INIT_FROM.value:
        with config.unlocked():
            config.init_from = _INIT_FROM.value
    train.train(config, _require(_WORKDIR, "train"))


def cmd_rows() -> None:
    from memdyn import config as config_lib, insertion
    from memdyn.data import sources
    from memdyn.data.order import StepOrder
    workdir, step = _require(_WORKDIR, "rows"), _require(_STEP, "rows")
    config = config_lib.load_run_config(workdir)
    if not 0 <= step < config.num_steps:
        raise ValueError(f"--step={step} is outside the run's steps [0, {config.num_steps})")
    data = sources.open_run_data(workdir, config)
    order = StepOrder(data.train.num_examples, config.batch_size, config.data.order_seed)
    batches = []
    if step in insertion.insertion_steps(config.insert, config.num_steps):
        inserted = data.sets[config.insert.set]
        batches += [(f"insert:{config.insert.set}:{r}", inserted.rows(np.arange(inserted.num_examples)))
                    for r in range(config.insert.repeats)]
    batches.append(("train", data.train.rows(order.rows(step))))
    for kind, rows in batches:
        for example_id, tokens in zip(rows["example_ids"], rows["tokens"]):
            text = f"\t{data.decode(tokens)}" if _TEXT.value else ""
            print(f"{kind}\t{example_id}{text}")


def cmd_eval() -> None:
    from memdyn import eval_checkpoint
    aggregates = eval_checkpoint.evaluate_checkpoint(
        _require(_WORKDIR, "eval"), _require(_SET, "eval"), _STEP.value, extract_k=_EXTRACT.value,
        prompt_len=_PROMPT_LEN.value, num_new=_NUM_NEW.value)
    print("\n".join(f"{k}: {v}" for k, v in aggregates.items()))


def cmd_analyze(what: str) -> None:
    if what not in ANALYSES:
        raise app.UsageError(f"`memdyn analyze` needs one of {ANALYSES}; got {what!r}")
    from memdyn.analysis import forgetting
    if bool(_WORKDIR.value) == bool(_SWEEP.value):
        raise app.UsageError("`memdyn analyze forgetting` needs exactly one of --workdir or --sweep")
    workdirs = [_WORKDIR.value] if _WORKDIR.value else forgetting.find_runs(_SWEEP.value)
    if not workdirs:
        raise FileNotFoundError(f"--sweep={_SWEEP.value!r} holds no runs (no eval.csv below it)")
    out = _OUT.value or _WORKDIR.value or _SWEEP.value
    _, summary = forgetting.analyze_runs(workdirs, set_name=_SET.value or "special", out_dir=out)
    print(summary.to_string(index=False))
    print(f"wrote {out}/forgetting_curves.csv, forgetting_summary.csv, forgetting.png")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: memdyn <{'|'.join(COMMANDS)}> [flags]; got {argv[1:]!r}. "
                             "`memdyn --helpfull` lists every flag.")
    positional = argv[3:] if argv[1] == "analyze" else argv[2:]
    if positional:
        raise app.UsageError(f"unexpected arguments {positional!r}")
    logs.configure()
    try:
        if argv[1] == "analyze":
            cmd_analyze(argv[2] if len(argv) > 2 else "")
        else:
            {"train": cmd_train, "eval": cmd_eval, "rows": cmd_rows}[argv[1]]()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # Bad input (a flag, a config value, a file): say what, without a traceback.
        if os.environ.get("MEMDYN_TRACEBACK"):
            raise
        print(f"memdyn {argv[1]}: error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
