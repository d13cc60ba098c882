"""Device mesh, logical axis rules and the helpers that turn logical names into shardings.

Parameters and activations are annotated with *logical* axis names (``embed``, ``mlp``, ``heads``, ``vocab``,
``batch``, ``length`` ...). The config's ``sharding.rules`` map each logical name to a mesh axis (or several, or
none). Changing the parallelism layout is then a config edit, never a model edit.

The active rules are Flax's (``nnx.logical_axis_rules(rules)`` sets them, for parameter specs and activations
alike); where none are set, ``DEFAULT_RULES`` apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used for activations are prefixed ``act_`` so that e.g. the ``embed`` dimension of a weight can be
# FSDP-sharded while the ``embed`` dimension of an activation (whose batch already uses ``fsdp``) stays whole.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("positions", None),
    ("layers", None),  # a scanned model's stacked blocks (config.model.scan_layers)
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh. One entry of ``shape`` may be -1: it takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills a -1 entry and checks that the mesh uses exactly ``num_devices`` devices."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"config.sharding.mesh={tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config.sharding.mesh={tuple(shape)}: entries must be positive, with at most one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if num_devices % rest:
            raise ValueError(f"config.sharding.mesh={tuple(shape)} does not divide the {num_devices} available devices")
        shape[shape.index(-1)] = num_devices // rest
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.sharding.mesh={tuple(shape)} needs {math.prod(shape)} devices but {num_devices} are "
            f"available; use -1 on one axis to take the rest"
        )
    return tuple(shape)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Normalises config rules (lists from JSON, tuples from Python) into ((name, mesh_axes), ...)."""
    normalized = []
    for name, axes in rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"config.sharding.rules: logical axis {name!r} maps to unknown mesh axis "
                    f"{axis!r}; mesh axes are {MESH_AXES}"
                )
        normalized.append((str(name), axes))
    if not any(name == "layers" for name, _ in normalized):  # rules written before scanned layers existed
        normalized.append(("layers", None))
    return tuple(normalized)


def active_rules() -> tuple[tuple[str, Any], ...]:
    """The logical→mesh rules in force: Flax's (``nnx.logical_axis_rules``), else ``DEFAULT_RULES``."""
    return tuple(flax_spmd.get_logical_axis_rules()) or DEFAULT_RULES


def logical_to_spec(names: Sequence[str | None]) -> P:
    """PartitionSpec for an array whose dimensions carry ``names`` under the active rules."""
    rules = dict(active_rules())
    used: set[str] = set()
    spec = []
    for name in names:
        axes = rules.get(name) if name is not None else None
        # A mesh axis may shard only one dimension; the first dimension that asks for it gets it.
        flat = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None and a not in used)
        used.update(flat)
        spec.append(flat[0] if len(flat) == 1 else (flat or None))
    return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation, by logical names; a no-op outside a mesh."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def param_specs(abstract_params: nnx.State) -> Any:
    """Pure-dict tree of PartitionSpecs for an (abstract) parameter state, under the active rules."""
    with nnx.logical_axis_rules(active_rules()):  # Flax's, or the defaults when none are set
        return nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))


def named(mesh: jax.sharding.Mesh, specs: Any) -> Any:
    """Maps a tree of PartitionSpecs to NamedShardings on ``mesh``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
    """Sharding of a per-example array [B, ...]: the batch dimension over the data-parallel axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """Number of shards of the batch dimension under the active rules."""
    axes = logical_to_spec(("batch",))[0]
    axes = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in axes if a is not None]))
