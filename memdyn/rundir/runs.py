"""What a run directory is, for every command that reads or writes one.

A run (a ``--workdir``) is a directory holding ``config.json``, the resolved config it was trained with. This
module finds runs below a directory, reads their configs, gives their identity columns, decides whether a config
may continue a stored run, and writes files atomically (a reader sees the old file or the new one, never half).
No JAX here: the data builders, the sweep planner and the analyses import it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from ml_collections import config_dict

CONFIG_FILE = "config.json"
SWEEP_FILE = "sweep.json"
# The directories a run writes; never searched for other runs.
RUN_OUTPUTS = frozenset({"checkpoints", "data", "examples", "eval_examples", "tensorboard", "evals", "logs"})

# Columns that say which run a row of a result file comes from, so that a sweep's files concatenate into one table.
IDENTITY_COLUMNS = ("run", "size", "params", "causal", "seed", "peak_lr", "batch_size", "seq_len")
_IDENTITY_FIELDS = {
    "size": ("model", "size"),
    "params": ("model", "params"),
    "causal": ("model", "causal"),
    "seed": ("seed",),
    "peak_lr": ("optimizer", "lr"),
    "batch_size": ("batch_size",),
    "seq_len": ("data", "seq_len"),
}

# Fields that may differ between a checkpoint's run and the run continuing it: how long to train, where, how often
# to save and evaluate, what to insert, how to fit a step in memory (microbatches, rematerialisation) and which
# kernels run the math (the same math up to rounding). Everything else (model, data, optimizer, seed) must match.
RESUMABLE_CHANGES = (
    "num_steps",
    "log_every",
    "checkpoint.",
    "eval.",
    "sharding.",
    "insert.",
    "grad_accum",
    "model.remat",
    "model.cpu_kernels",  # CPU-tuned kernels or plain JAX ops: the same math up to the last bits
)
FORK_CHANGES = ("model.scan_layers",)  # a fork converts the parent's checkpoint to its own layout


# -- files ---------------------------------------------------------------------------------------------------------
def umask() -> int:
    """The process's umask, read without changing it: the ``Umask:`` line of /proc/self/status (Linux). Elsewhere
    it is set and put back at once (``os.umask`` can only be read so), a moment in which another thread's new file
    would get the placeholder 022."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(directory: bool = False) -> int:
    """The permissions a plain ``open(path, "w")`` (0666) or ``os.mkdir`` (0777) gives under the umask: what
    memdyn's temporary files (``tempfile`` makes them 0600, directories 0700) get before they take their name."""
    return (0o777 if directory else 0o666) & ~umask()


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """Calls ``write(tmp)`` on a hidden temporary file beside ``path``, then renames it to ``path``. The file has
    the permissions a plain write would give it (``plain_mode``), not ``tempfile``'s 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".tmp-")
    try:
        try:
            os.fchmod(fd, plain_mode())  # a writer that opens tmp again keeps it; one making it anew gets the umask's
        finally:
            os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str, payload: Any) -> str:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


# -- configs -------------------------------------------------------------------------------------------------------
def read_config(workdir: str) -> dict[str, Any] | None:
    """The run's stored config as a dict; None when ``workdir`` holds no run."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return _with_later_fields(json.load(f))


def _with_later_fields(stored: dict[str, Any]) -> dict[str, Any]:
    """A config stored before a field existed gets the field's default, which is what that run did."""
    model = stored.setdefault("model", {})
    model.setdefault("mlp", "gelu")
    model.setdefault("attention", "einsum")
    model.setdefault("remat", "none")
    model.setdefault("scan_layers", False)
    model.setdefault("cpu_kernels", "auto")  # a CPU run had the kernels then, as "auto" gives it now
    if "num_layers" in model:  # a resolved shape: these were fixed before they became fields
        for field, value in (("parallel_residual", False), ("norm_eps", 1e-5), ("rotary_base", 10000.0)):
            model.setdefault(field, value)
    stored.setdefault("grad_accum", 1)
    stored.setdefault("data", {}).setdefault("chunk_len", None)
    stored.setdefault("eval", {}).setdefault("memsinks_modes", [])
    stored["eval"].setdefault("pos", False)  # per-tag counts came later; a run made before did not compute them
    stored.setdefault(
        "memsinks",
        {
            "method": "none",
            "p_gen": 0.7,
            "p_mem": 0.3,
            "mask": "paper",
            "id_width": 64,
            "ids": "sequence",
            "layers": [],
            "exclude_set": None,
        },
    )
    return stored


def load_config(workdir: str, flag: str = "--workdir") -> config_dict.ConfigDict:
    """The run's stored config; a clear error when ``workdir`` holds no run."""
    stored = read_config(workdir)
    if stored is None:
        raise FileNotFoundError(f"{flag}={workdir!r} holds no memdyn run (no {CONFIG_FILE})")
    return config_dict.ConfigDict(stored)


def write_config(config: config_dict.ConfigDict, workdir: str) -> None:
    from memdyn import config as config_lib

    atomic_write_text(os.path.join(workdir, CONFIG_FILE), config_lib.to_json(config))


def run_name(workdir: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def identity(config: dict[str, Any] | config_dict.ConfigDict, workdir: str) -> dict[str, Any]:
    """The identity columns of a run from its (resolved) config; ``run`` is the workdir's name."""
    if isinstance(config, config_dict.ConfigDict):
        config = config.to_dict()
    row = {"run": run_name(workdir)}
    for column, keys in _IDENTITY_FIELDS.items():
        node: Any = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        row[column] = node
    return row


def check_compatible(stored: dict[str, Any], config: config_dict.ConfigDict, where: str, *, fork: bool = False) -> None:
    """Refuses to continue ``stored`` as ``config`` when model, data, optimizer or seed differ, naming the fields.

    ``fork``: ``config`` starts a new run from ``stored``'s checkpoint, so its provenance may differ. ``config``:
    resolved (compared as it is) or plain (resolved here against the stored run's vocabulary).
    """
    from memdyn import config as config_lib

    resolved = (
        config
        if config_lib.is_resolved(config)
        else config_lib.resolve(config, vocab_size=stored["model"]["vocab_size"])
    )
    requested = json.loads(config_lib.to_json(resolved))
    if fork:
        requested["init_from"] = stored.get("init_from")
    allowed = RESUMABLE_CHANGES + (FORK_CHANGES if fork else ())
    problems = [d for d in config_lib.differences(stored, requested) if not d.split(":")[0].startswith(allowed)]
    if problems:
        hint = (
            (
                "; a scanned model's checkpoint holds its blocks stacked (`blocks`), an unrolled one's apart "
                "(`block_00`, ...): keep the run's own model.scan_layers, or fork it in the other layout "
                "(`memdyn train --init_from=<this run> --config.model.scan_layers=...`)"
            )
            if any(d.startswith("model.scan_layers") for d in problems)
            else ""
        )
        raise ValueError(f"{where} holds a run with an incompatible config: " + "; ".join(problems[:10]) + hint)


# -- checkpoints, without orbax ------------------------------------------------------------------------------------
def latest_checkpoint(workdir: str) -> int | None:
    """The newest finished checkpoint step of a run (orbax renames a checkpoint to its step when it is done)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d))]
    return max(steps, default=None)


def is_complete(workdir: str, num_steps: int) -> bool:
    """Whether ``workdir`` holds a run trained to ``num_steps`` steps, without building it."""
    step = latest_checkpoint(workdir)
    return read_config(workdir) is not None and step is not None and step >= num_steps


# -- finding runs --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunDir:
    workdir: str
    label: str  # the run's directory relative to the searched directory (its name when it is that directory)
    overrides: dict[str, Any]  # the sweep values that made it (from sweep.json, else parsed from its name)


def find_runs(directory: str) -> list[RunDir]:
    """Every run (a directory with a config.json) at or below ``directory``, in sorted order.

    A run's own output directories are not searched, so an export or analysis written into a sweep is no run.
    """
    known, found = {}, []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        known.update(_sweep_overrides(root))
        if CONFIG_FILE in files:
            dirs[:] = [d for d in dirs if d not in RUN_OUTPUTS]
            found.append(root)
    runs = []
    for workdir in found:
        label = os.path.relpath(workdir, directory)
        label = run_name(workdir) if label == "." else label
        overrides = known.get(os.path.realpath(workdir))
        if overrides is None:
            overrides = overrides_from_name(run_name(workdir))
        runs.append(RunDir(workdir, label, {k: _column_value(v) for k, v in overrides.items()}))
    return runs


def require_runs(directory: str, flag: str = "--sweep") -> list[RunDir]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{flag}={directory!r} is not a directory")
    runs = find_runs(directory)
    if not runs:
        raise FileNotFoundError(f"{flag}={directory!r} holds no memdyn runs (no {CONFIG_FILE} below it)")
    return runs


def parse_value(text: str) -> Any:
    """A value as a ``--config.<field>=<text>`` override means it: a Python literal, else the raw string."""
    import ast

    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def overrides_from_name(name: str) -> dict[str, Any]:
    """``model.size=tiny,seed=1`` -> {"model.size": "tiny", "seed": 1}; {} for a name of another form."""
    pairs = [part.partition("=") for part in name.split(",")]
    if not all(eq and key for key, eq, _ in pairs):
        return {}
    return {key: parse_value(value) for key, _, value in pairs}


def _column_value(value: Any) -> Any:
    return str(tuple(value)) if isinstance(value, list) else value  # JSON turned tuples into lists


def _sweep_overrides(directory: str) -> dict[str, dict[str, Any]]:
    """{real path of a run: its overrides} from ``directory``'s sweep.json, if any."""
    path = os.path.join(directory, SWEEP_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        runs = json.load(f).get("runs", [])
    return {os.path.realpath(os.path.join(directory, r["name"])): r.get("overrides", {}) for r in runs}
