"""``memdyn import-hf``: a local Hugging Face GPT-NeoX checkpoint (Pythia's architecture; ``config.json`` and
``*.safetensors``, nothing downloaded) as a memdyn workdir that ``memdyn extract`` and ``memdyn eval`` read like
any run.

The workdir holds ``config.json`` (``model.size='custom'`` with the checkpoint's shape, ``data.source='imported'``:
no training data) and ``checkpoints/<step>`` with the parameters only. The mapping:

  gpt_neox.embed_in.weight [V, D]                              -> embed
  layers.i.input_layernorm / post_attention_layernorm          -> block_i.attention_norm / mlp_norm
  layers.i.attention.query_key_value.weight [3·D, D]           -> query/key/value_kernel [D, H, K]: the fused
      output is laid out head-major, (head, q/k/v, head_dim), as GPT-NeoX splits it
  layers.i.attention.dense.weight [D, D]                       -> out_kernel [H, K, D]
  layers.i.mlp.dense_h_to_4h / dense_4h_to_h                   -> mlp.in_kernel [D, F] / out_kernel [F, D]
  final_layer_norm                                             -> final_norm
  embed_out.weight or lm_head.weight [V, D] (untied, no bias)  -> unembed [D, V]

Supported: ``model_type`` gpt_neox, ``hidden_act`` gelu (exact), default rotary (``rotary_pct`` /
``rotary_emb_base``, or ``rope_parameters`` of newer files), parallel or sequential residual, attention biases.
Anything else is refused with the field named.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np

from memdyn import config as config_lib
from memdyn.data import run_data
from memdyn.model import sizes
from memdyn.rundir import runs
from memdyn.train import checkpoint, steps


def read_hf_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--hf_dir={hf_dir!r} has no config.json (a local Hugging Face checkpoint directory)")
    with open(path) as f:
        return json.load(f)


def shape_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """memdyn's ``config.model`` fields for a GPT-NeoX config; an unsupported setting is refused by name."""

    def refuse(field: str, value: Any, expected: str):
        raise ValueError(f"config.json: {field}={value!r} is not supported (memdyn reads {expected})")

    if hf.get("model_type") != "gpt_neox":
        refuse("model_type", hf.get("model_type"), "GPT-NeoX checkpoints: model_type 'gpt_neox'")
    if hf.get("hidden_act", "gelu") != "gelu":
        refuse("hidden_act", hf.get("hidden_act"), "'gelu' (exact)")
    if not hf.get("attention_bias", True):
        refuse("attention_bias", False, "attention with biases, as Pythia's")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        refuse("rope_scaling", hf.get("rope_scaling") or rope, "unscaled (default) rotary embeddings")
    for field in (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    ):
        if not isinstance(hf.get(field), int) or hf[field] < 1:
            refuse(field, hf.get(field), "a positive integer")
    return {
        "num_layers": hf["num_hidden_layers"],
        "d_model": hf["hidden_size"],
        "num_heads": hf["num_attention_heads"],
        "d_ff": hf["intermediate_size"],
        "max_len": hf["max_position_embeddings"],
        "positions": "rotary",
        "rotary_fraction": float(hf.get("rotary_pct", rope.get("partial_rotary_factor", 0.25))),
        "rotary_base": float(hf.get("rotary_emb_base", rope.get("rope_theta", 10000.0))),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "mlp": "gelu",
        "parallel_residual": bool(hf.get("use_parallel_residual", True)),
        "norm_eps": float(hf.get("layer_norm_eps", 1e-5)),
    }


_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # BF16: raw bits


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint's safetensors files (one file or shards), as float32 NumPy arrays.

    The format is read directly (an 8-byte header length, a JSON header of dtype, shape and byte offsets, then the
    data), so bfloat16 files, which safetensors' NumPy loader cannot type, read like the others.
    """
    paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not paths:
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.bin")))
        raise FileNotFoundError(
            f"--hf_dir={hf_dir!r} has no *.safetensors weights"
            + (f" (found {found}: convert them to safetensors first)" if found else "")
        )
    weights = {}
    for path in paths:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        data = np.memmap(path, np.uint8, "r", offset=8 + header_len)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _FLOATS:
                raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; memdyn reads {sorted(_FLOATS)}")
            start, stop = info["data_offsets"]
            array = np.frombuffer(data[start:stop], _FLOATS[info["dtype"]]).reshape(info["shape"])
            if info["dtype"] == "BF16":  # the top 16 bits of a float32
                array = (array.astype(np.uint32) << 16).view(np.float32)
            weights[name] = np.array(array, np.float32)
    return weights


def to_params(weights: dict[str, np.ndarray], fields: dict[str, Any]) -> dict[str, Any]:
    """memdyn's parameter tree (``nnx.to_pure_dict`` layout) from GPT-NeoX tensors."""
    d, h = fields["d_model"], fields["num_heads"]
    k = d // h

    def take(name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        for prefix in ("gpt_neox.", ""):
            if prefix + name in weights:
                array = weights.pop(prefix + name)
                if shape is not None and array.shape != shape:
                    raise ValueError(
                        f"tensor {prefix + name} has shape {array.shape}; config.json's sizes make it {shape}"
                    )
                return array
        raise ValueError(f"the checkpoint has no tensor {name!r}")

    def norm(name: str) -> dict[str, np.ndarray]:
        return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}

    params: dict[str, Any] = {"embed": take("embed_in.weight")}
    for i in range(fields["num_layers"]):
        layer = f"layers.{i}"
        qkv_HxCxKxD = take(f"{layer}.attention.query_key_value.weight", (3 * d, d)).reshape(h, 3, k, d)  # q, k, v
        qkv_bias_HxCxK = take(f"{layer}.attention.query_key_value.bias", (3 * d,)).reshape(h, 3, k)
        attention = {}
        for c, name in enumerate(("query", "key", "value")):
            attention[f"{name}_kernel"] = qkv_HxCxKxD[:, c].transpose(2, 0, 1)  # [D, H, K]
            attention[f"{name}_bias"] = qkv_bias_HxCxK[:, c]
        attention["out_kernel"] = take(f"{layer}.attention.dense.weight", (d, d)).T.reshape(h, k, d)
        attention["out_bias"] = take(f"{layer}.attention.dense.bias")
        mlp = {
            "in_kernel": take(f"{layer}.mlp.dense_h_to_4h.weight").T,
            "in_bias": take(f"{layer}.mlp.dense_h_to_4h.bias"),
            "out_kernel": take(f"{layer}.mlp.dense_4h_to_h.weight").T,
            "out_bias": take(f"{layer}.mlp.dense_4h_to_h.bias"),
        }
        params[f"block_{i:02d}"] = {
            "attention_norm": norm(f"{layer}.input_layernorm"),
            "attention": attention,
            "mlp_norm": norm(f"{layer}.post_attention_layernorm"),
            "mlp": mlp,
        }
    params["final_norm"] = norm("final_layer_norm")
    head = next((n for n in ("embed_out.weight", "lm_head.weight") if n in weights), None)
    if not fields["tie_embeddings"]:
        if head is None:
            raise ValueError(
                "the checkpoint has no output embedding (embed_out.weight or lm_head.weight) and "
                "tie_word_embeddings is false"
            )
        params["unembed"] = weights.pop(head).T
    elif head is not None:
        weights.pop(head)  # tied: the same tensor as embed_in
    for name in list(weights):
        if name.endswith(("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")):
            weights.pop(name)  # buffers of older GPT-NeoX files, not parameters
    if weights:
        raise ValueError(f"the checkpoint has tensors memdyn does not map: {sorted(weights)[:5]}")
    return params


def import_hf(hf_dir: str, workdir: str, step: int = 0) -> dict[str, Any]:
    """Writes the workdir; returns a summary (shape, parameters, checkpoint step)."""
    if runs.read_config(workdir) is not None:
        raise FileExistsError(f"--workdir={workdir!r} already holds a run; import into a new directory")
    if step < 0:
        raise ValueError(f"--step={step} must be non-negative (the checkpoint's training step)")
    hf = read_hf_config(hf_dir)
    fields = shape_fields(hf)
    config = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    with config.unlocked():
        config.model.size = sizes.CUSTOM
        for name, value in fields.items():
            config.model[name] = value
        config.data.source = "imported"
        config.data.seq_len = hf["max_position_embeddings"]
    data = run_data.RunData(train=None, sets={}, words=None, vocab_size=hf["vocab_size"], mask_id=None)
    run = steps.build_run(config, data)
    params = to_params(read_weights(hf_dir), fields)
    _check_shapes(params, run.abstract_params)
    import jax

    with run.context():
        placed = jax.device_put(params, run.param_shardings)
    created = not os.path.exists(workdir)
    try:
        runs.write_config(run.config, workdir)
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
        try:
            ckpt.save(step, placed, {}, {"imported_from": os.path.abspath(hf_dir), "step": step})
            ckpt.wait()
        finally:
            ckpt.close()
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return {
        "workdir": workdir,
        "params": int(run.config.model.params),
        "step": step,
        **{k: fields[k] for k in ("num_layers", "d_model", "num_heads", "d_ff", "parallel_residual")},
    }


def _check_shapes(params, abstract) -> None:
    import jax

    flat, expected = (dict(jax.tree_util.tree_leaves_with_path(t)) for t in (params, abstract))
    for path, spec in expected.items():
        name = jax.tree_util.keystr(path)
        if path not in flat:
            raise ValueError(f"the checkpoint gives no parameter for {name}")
        if tuple(flat[path].shape) != tuple(spec.shape):
            raise ValueError(
                f"parameter {name}: the checkpoint's shape {tuple(flat[path].shape)} is not the "
                f"model's {tuple(spec.shape)}"
            )
