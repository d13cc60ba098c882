"""Parameters of an unrolled model (``block_00``, ...) and of a scanned one (``blocks``, a leading ``layers`` axis),
converted into each other (``config.model.scan_layers``): pure dicts of arrays, e.g. a checkpoint's."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def stack_blocks(params: dict) -> dict:
    """Parameters of an unrolled model (``block_00``, ...) as those of the scanned one (``blocks``, with a leading
    layers axis); ``unstack_blocks`` is the inverse. Pure dicts of arrays, e.g. a checkpoint's."""
    names = sorted(k for k in params if k.startswith("block_"))
    out = {k: v for k, v in params.items() if not k.startswith("block_")}
    out["blocks"] = jax.tree.map(lambda *layers: jnp.stack(layers), *[params[name] for name in names])
    return out


def unstack_blocks(params: dict) -> dict:
    out = {k: v for k, v in params.items() if k != "blocks"}
    num_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    for i in range(num_layers):
        out[f"block_{i:02d}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
    return out


def convert_layout(tree, scanned: bool):
    """Parameters, or an optimizer state holding parameter-shaped trees (Adam's moments), with their blocks
    stacked (``scanned``: ``stack_blocks``) or apart (``unstack_blocks``), wherever in ``tree`` they occur."""
    if isinstance(tree, dict):
        tree = {k: convert_layout(v, scanned) for k, v in tree.items()}
        if scanned and any(k.startswith("block_") for k in tree):
            return stack_blocks(tree)
        if not scanned and "blocks" in tree:
            return unstack_blocks(tree)
        return tree
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # optax states are named tuples
        return type(tree)(*(convert_layout(v, scanned) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(convert_layout(v, scanned) for v in tree)
    return tree
