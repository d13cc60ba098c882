"""Resolving and validating a run's config before any compute.

``resolve`` fills the model shape from the size preset (explicit fields override it), the vocabulary size from
the data, and the parameter count; it checks every value a run depends on and names the offending field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

from absl import logging
from ml_collections import config_dict

from memdyn.model import sizes
from memdyn.train import objective

SCHEDULES = ("constant", "linear", "cosine", "polynomial")
SOURCES = ("synthetic", "tfds", "text", "seqio", "store", "imported")  # imported: no data (memdyn import-hf)
TAGGERS = ("none", "gold", "spacy")
DOC_IDS = ("none", "prefix", "control")
_SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(sizes.ModelShape) if f.name != "vocab_size")


COMPUTE_DTYPES = ("float32", "bfloat16")  # float16 would need loss scaling
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")  # memdyn's own, jax.nn.dot_product_attention's two


def eval_batch_size(config: config_dict.ConfigDict) -> int:
    """Rows per evaluation (and extraction) batch: a microbatch's, since a run that needs gradient accumulation to
    fit may not fit a whole batch's float32 logits either. Per-example results do not depend on it."""
    return config.batch_size // config.get("grad_accum", 1)


def model_shape(config: config_dict.ConfigDict, vocab_size: int) -> sizes.ModelShape:
    """Preset shape with the config's explicit overrides applied."""
    m = config.model
    default_len = m.max_len if m.max_len is not None else config.data.seq_len
    if m.size == sizes.CUSTOM:  # every field of the shape given (an imported model)
        missing = [f for f in ("num_layers", "d_model", "num_heads", "d_ff") if m.get(f) is None]
        if missing:
            raise ValueError(f"config.model.size='custom' needs config.model.{missing[0]} (and every one of {missing})")
        shape = sizes.ModelShape(m.num_layers, m.d_model, m.num_heads, m.d_ff, vocab_size, default_len)
    else:
        shape = sizes.preset_shape(m.size, vocab_size=vocab_size, max_len=default_len)
    overrides = {f: m[f] for f in _SHAPE_FIELDS if m.get(f) is not None}
    if m.size not in sizes.PAPER_PRESETS:
        overrides["vocab_size"] = vocab_size
    shape = dataclasses.replace(shape, **overrides)
    shape.validate()
    return shape


def resolve(config: config_dict.ConfigDict, *, vocab_size: int, validated: bool = False) -> config_dict.ConfigDict:
    """A validated copy of ``config`` with the model shape, vocabulary size and parameter count filled in.

    ``validated``: ``validate(config)`` has run already (``memdyn train`` runs it before it builds any data), so it
    does not run twice. Resolve a config once, where a command starts, and pass the result on: the functions that
    take a config (``memdyn.train.steps.build_run``, ``memdyn.rundir.runs.check_compatible``) use a resolved one
    as it is (``is_resolved``).
    """
    if not validated:
        validate(config)
    shape = model_shape(config, vocab_size)
    if shape.vocab_size < vocab_size:
        raise ValueError(
            f"the data's vocabulary has {vocab_size} ids but config.model.size={config.model.size!r} "
            f"has vocab_size={shape.vocab_size}"
        )
    seq_len = config.data.seq_len - (1 if config.model.causal else 0)  # causal models read L-1 tokens
    if seq_len > shape.max_len:
        raise ValueError(
            f"config.data.seq_len={config.data.seq_len} is longer than the position table "
            f"(config.model.max_len={shape.max_len})"
        )
    from memdyn.studies.memsinks import masks as memsinks

    if config.memsinks.method != "none" and min(memsinks.split_units(shape.d_ff, config.memsinks.p_gen)) < 1:
        raise ValueError(
            f"config.memsinks.p_gen={config.memsinks.p_gen} leaves no general or no sink unit of "
            f"the {shape.d_ff} hidden units"
        )
    for layer in config.memsinks.layers:
        if not isinstance(layer, int) or not 0 <= layer < shape.num_layers:
            raise ValueError(f"config.memsinks.layers: {layer!r} is not a layer of this {shape.num_layers}-layer model")
    resolved = config_dict.ConfigDict(config.to_dict())
    with resolved.unlocked():
        for field in _SHAPE_FIELDS:
            resolved.model[field] = getattr(shape, field)
        resolved.model.vocab_size = shape.vocab_size
        resolved.model.params = sizes.count_params(shape)
        if resolved.data.order_seed is None:
            resolved.data.order_seed = config.seed
    return resolved


def is_resolved(config: config_dict.ConfigDict) -> bool:
    """Whether ``config`` is ``resolve``'s output (or a run's config.json, written resolved): only resolving adds
    model.params and model.vocab_size, which configs/base.py does not have, and it sets every shape field."""
    model = config.model
    return all(field in model for field in ("params", "vocab_size", *_SHAPE_FIELDS))


def validate(config: config_dict.ConfigDict) -> None:
    """Checks of values that need no data; each error names the field and value."""

    def positive(name: str, value: Any) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be a positive integer")

    positive("num_steps", config.num_steps)
    positive("batch_size", config.batch_size)
    positive("log_every", config.log_every)
    positive("grad_accum", config.grad_accum)
    if config.batch_size % config.grad_accum:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by config.grad_accum="
            f"{config.grad_accum} microbatches"
        )
    if config.model.size not in sizes.PRESET_NAMES + (sizes.CUSTOM,):
        raise ValueError(
            f"config.model.size={config.model.size!r} is not a known size preset; known: "
            f"{', '.join(sizes.PRESET_NAMES)} (or 'custom' with every shape field given)"
        )
    if config.model.mlm_scored not in objective.SCORED:
        raise ValueError(f"config.model.mlm_scored={config.model.mlm_scored!r}: expected one of {objective.SCORED}")
    for field in ("every", "every_epochs"):
        if not isinstance(config.eval[field], int) or config.eval[field] < 0:
            raise ValueError(f"config.eval.{field}={config.eval[field]!r} must be a non-negative integer")
    if config.model.dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"config.model.dtype={config.model.dtype!r}: expected one of {COMPUTE_DTYPES} (the compute "
            "dtype; parameters, optimizer state, logits, loss and metrics stay float32)"
        )
    if config.model.attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"config.model.attention={config.model.attention!r}: expected one of "
            f"{ATTENTION_IMPLEMENTATIONS} (einsum: memdyn's own; xla, cudnn: jax.nn.dot_product_attention's)"
        )
    from memdyn.model import cpu_kernels
    from memdyn.model.transformer import REMAT_POLICIES

    if config.model.remat not in REMAT_POLICIES:
        raise ValueError(f"config.model.remat={config.model.remat!r}: expected one of {tuple(REMAT_POLICIES)}")
    if config.model.cpu_kernels not in cpu_kernels.CHOICES:
        raise ValueError(
            f"config.model.cpu_kernels={config.model.cpu_kernels!r}: expected one of {cpu_kernels.CHOICES} (on: "
            "memdyn.model.cpu_kernels' XLA-CPU-tuned kernels, off: plain JAX ops, auto: on when JAX's default "
            "backend is the CPU)"
        )
    if config.model.attention == "cudnn" and config.model.dtype != "bfloat16":
        raise ValueError(
            "config.model.attention='cudnn' needs config.model.dtype='bfloat16' (cuDNN's fused "
            f"attention takes bfloat16 or float16 inputs, not {config.model.dtype})"
        )
    if not 0.0 < config.model.mask_prob < 1.0:
        raise ValueError(f"config.model.mask_prob={config.model.mask_prob} must be in (0, 1)")
    opt = config.optimizer
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected one of {SCHEDULES}")
    if not opt.lr > 0:
        raise ValueError(f"config.optimizer.lr={opt.lr} must be positive")
    if opt.warmup_steps < 0:
        raise ValueError(f"config.optimizer.warmup_steps={opt.warmup_steps} must be non-negative")
    if opt.warmup_steps > config.num_steps:  # a smoke test of a few steps should just run
        logging.warning(
            "config.optimizer.warmup_steps=%d is longer than the run (num_steps=%d): the learning "
            "rate never reaches config.optimizer.lr=%g",
            opt.warmup_steps,
            config.num_steps,
            opt.lr,
        )
    _validate_memsinks(config)
    if config.data.source not in SOURCES:
        raise ValueError(f"config.data.source={config.data.source!r}: expected one of {SOURCES}")
    if config.data.source == "store" and not config.data.store:
        raise ValueError("config.data.source='store' needs config.data.store=<directory of an example store>")
    if config.data.seq_len < 2:
        raise ValueError(f"config.data.seq_len={config.data.seq_len} must be at least 2")
    _validate_source(config.data)


def _validate_memsinks(config: config_dict.ConfigDict) -> None:
    from memdyn.studies.memsinks import masks as memsinks

    m = config.memsinks
    for field, allowed in (
        ("method", memsinks.METHODS),
        ("mask", memsinks.MASK_KINDS),
        ("id_width", memsinks.ID_WIDTHS),
        ("ids", memsinks.IDS),
    ):
        if m[field] not in allowed:
            raise ValueError(f"config.memsinks.{field}={m[field]!r}: expected one of {allowed}")
    if not 0.0 < m.p_gen < 1.0:
        raise ValueError(f"config.memsinks.p_gen={m.p_gen} must be in (0, 1)")
    if not 0.0 < m.p_mem <= 1.0:
        raise ValueError(f"config.memsinks.p_mem={m.p_mem} must be in (0, 1]")
    for mode in config.eval.memsinks_modes:
        if mode not in memsinks.EVAL_MODES:
            raise ValueError(f"config.eval.memsinks_modes: {mode!r} is not one of {memsinks.EVAL_MODES}")
    if config.eval.memsinks_modes and m.method == "none":
        raise ValueError("config.eval.memsinks_modes needs a MemSinks run (config.memsinks.method='sinks' or 'shared')")
    if m.method == "shared" and set(config.eval.memsinks_modes) - {"train", "all", "dropout"}:
        raise ValueError(
            "config.memsinks.method='shared' has modes train, all and dropout only; "
            f"config.eval.memsinks_modes={tuple(config.eval.memsinks_modes)}"
        )
    if "exclude" in config.eval.memsinks_modes and not m.exclude_set:
        raise ValueError("config.eval.memsinks_modes has 'exclude': set config.memsinks.exclude_set=<a set name>")
    if m.method == "shared" and m.ids == "placebo":
        raise ValueError("config.memsinks.ids='placebo' needs sequence-tied sinks (config.memsinks.method='sinks')")


def _validate_source(data: config_dict.ConfigDict) -> None:
    if data.source == "text" and not data.text.paths:
        raise ValueError("config.data.source='text' needs config.data.text.paths=<files, directories or globs>")
    if data.source == "seqio" and not data.seqio.task:
        raise ValueError("config.data.source='seqio' needs config.data.seqio.task=<registered Task or Mixture>")
    if data.tags not in TAGGERS:
        raise ValueError(f"config.data.tags={data.tags!r}: expected one of {TAGGERS}")
    if data.source in ("synthetic", "seqio", "store"):
        # Options that act inside memdyn's tokenizing tasks; the synthetic corpus is pre-tokenized and tagged.
        for name, default in (("doc_ids", "none"), ("sentence_split", False), ("tags", "none")):
            if data[name] != default:
                raise ValueError(
                    f"config.data.{name}={data[name]!r} needs source 'tfds' or 'text' (for the "
                    f"synthetic corpus: source='tfds' with data.tfds.name='memdyn_synthetic')"
                )
    if data.doc_ids not in DOC_IDS:
        raise ValueError(f"config.data.doc_ids={data.doc_ids!r}: expected one of {DOC_IDS}")
    if (
        data.doc_ids == "prefix"
        and data.vocab.model_type == "word"
        and data.vocab.size is not None
        and not data.vocab.path
    ):
        # a word vocabulary cut to the most frequent words may leave out "document" and "ID" (then <unk>)
        raise ValueError(
            f"config.data.doc_ids='prefix' with a word vocabulary needs every word kept: leave "
            f"config.data.vocab.size unset (it is {data.vocab.size})"
        )
    chunk_len = data.get("chunk_len")
    if chunk_len is not None and data.source in ("seqio", "store"):
        raise ValueError(
            f"config.data.chunk_len={chunk_len} needs source 'synthetic', 'tfds' or 'text' (a seqio "
            f"task or a store comes already cut into examples)"
        )
    if chunk_len is not None and not 2 <= chunk_len <= data.seq_len:
        raise ValueError(f"config.data.chunk_len={chunk_len} must be between 2 and config.data.seq_len={data.seq_len}")
    if data.vocab.extra_ids is not None and data.vocab.extra_ids < 0:
        raise ValueError(f"config.data.vocab.extra_ids={data.vocab.extra_ids} must be non-negative")


def to_json(config: config_dict.ConfigDict) -> str:
    return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted field names whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += differences(a[key], b[key], name + ".")
        elif a.get(key) != b.get(key):
            out.append(f"{name}: {a.get(key)!r} != {b.get(key)!r}")
    return out


def _find_config_dir() -> str:
    """``configs/`` beside the package in a source checkout; ``memdyn/configs/`` in an installed wheel (setup.py
    ships the same files there)."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout, installed = os.path.join(os.path.dirname(here), "configs"), os.path.join(here, "configs")
    for candidate in (checkout, installed):
        if os.path.isfile(os.path.join(candidate, "base.py")):
            return candidate
    return checkout


CONFIG_DIR = _find_config_dir()


def config_path(spec: str) -> str:
    """A ``--config`` value: a file ``path[:arg]`` as given, or a packaged config by name (``memorization``,
    ``forgetting:tiny``), resolved to its file in ``CONFIG_DIR``."""
    path, sep, arg = spec.partition(":")
    if not os.path.exists(path) and os.sep not in path and not path.endswith(".py"):
        packaged = os.path.join(CONFIG_DIR, path + ".py")
        if os.path.isfile(packaged):
            return packaged + sep + arg
    return spec


def load_config_file(path: str, arg: str | None = None) -> config_dict.ConfigDict:
    """``get_config(arg)`` of a config file, as ``--config=path[:arg]`` would load it."""
    import importlib.util

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"memdyn_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        hint = moved_module_hint(error)
        if hint is None:
            raise
        raise ImportError(f"config file {path!r}: {hint}") from None
    return module.get_config(arg) if arg is not None else module.get_config()


# Modules that moved when memdyn's layout went by layer (CHANGELOG.md lists every name): a config file written
# before imports the old path, and is told the new one.
MOVED_MODULES = {
    "memdyn.model": "memdyn.model.transformer",
    "memdyn.sharding": "memdyn.model.sharding",
    "memdyn.sizes": "memdyn.model.sizes",
    "memdyn.core": "memdyn.train.steps",
    "memdyn.lifecycle": "memdyn.train.job",
    "memdyn.checkpoint": "memdyn.train.checkpoint",
    "memdyn.metrics": "memdyn.train.metrics",
    "memdyn.objective": "memdyn.train.objective",
    "memdyn.evaluate": "memdyn.train.evaluate",
    "memdyn.insertion": "memdyn.train.insertion",
    "memdyn.results": "memdyn.train.results",
    "memdyn.writers": "memdyn.train.writers",
    "memdyn.progress": "memdyn.train.progress",
    "memdyn.summary": "memdyn.train.summary",
    "memdyn.runs": "memdyn.rundir.runs",
    "memdyn.export": "memdyn.rundir.export",
    "memdyn.plots": "memdyn.rundir.plots",
    "memdyn.extract": "memdyn.extraction.extractability",
    "memdyn.extract_job": "memdyn.extraction.extract_job",
    "memdyn.eval_checkpoint": "memdyn.extraction.eval_checkpoint",
    "memdyn.import_hf": "memdyn.extraction.import_hf",
    "memdyn.sweep": "memdyn.sweeps",
    "memdyn.slurm": "memdyn.sweeps.slurm",
    "memdyn.tpu": "memdyn.sweeps.tpu",
    "memdyn.main": "memdyn.cli.main",
    "memdyn.logs": "memdyn.cli.logs",
    "memdyn.memsinks": "memdyn.studies.memsinks.masks",
    "memdyn.pos": "memdyn.studies.pos.counts",
    "memdyn.analysis": "memdyn.studies (an analysis: memdyn.studies.<study>.analysis)",
}


def moved_module_hint(error: ModuleNotFoundError) -> str | None:
    """One line naming the new home of a memdyn module that moved, for an import of its old path; else None."""
    name = error.name or ""
    old = next((m for m in sorted(MOVED_MODULES, key=len, reverse=True) if name == m or name.startswith(m + ".")), None)
    if old is None:
        return None
    return (
        f"imports {name}, which moved to {MOVED_MODULES[old]} (memdyn's layout by layer; CHANGELOG.md lists every "
        "moved name): change the import"
    )


def apply_overrides(config: config_dict.ConfigDict, overrides: dict[str, Any]) -> config_dict.ConfigDict:
    """A copy of ``config`` with dotted-field overrides; an unknown field or a wrong type raises ValueError."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        node, *parents, leaf = [config, *dotted.split(".")]
        for i, part in enumerate(parents):
            if not isinstance(node, config_dict.ConfigDict) or part not in node:
                raise ValueError(f"config.{dotted}: unknown field config.{'.'.join(parents[: i + 1])}")
            node = node[part]
        if not isinstance(node, config_dict.ConfigDict) or leaf not in node:
            raise ValueError(f"config.{dotted}: unknown field")
        if isinstance(node[leaf], config_dict.ConfigDict):
            raise ValueError(f"config.{dotted} is a group of fields; override one of them")
        if node.get_type(leaf) is str and value is not None and not isinstance(value, str):
            value = str(value)  # `model.size=1` means the string, as on the command line
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"config.{dotted}={value!r}: {e}") from None
    return config
