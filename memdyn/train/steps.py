"""What a run is made of, and its jitted functions: optimizer, sharded state, train and eval steps.

``build_run`` resolves a config against the data and the devices and raises before any compute on a bad value.
The state is a pair of pure pytrees (params, opt_state) sharded by logical axis rules; the model's structure (an
NNX GraphDef) is static. One ``jax.jit`` with explicit in/out shardings and donated state runs forward, backward,
the optimizer update and the memorization metrics of the same logits. Steps take the whole batch of the feeder
(``memdyn.data.feeder``: tokens, example and document ids, tags) and hand back its example and document ids
beside the per-example metrics, so results line up with the rows they describe on every process.

``batch_metrics`` (on ``build_run``) are extra functions ``fn(batch, logits_BxLxV, targets_BxL, weights_BxL) ->
dict`` (weights: the scored positions) evaluated inside every train and eval step on the same logits; their
outputs join the step's metrics. A
per-token batch field covers the L input positions; a causal LM's targets are positions 1..L-1 (``[:, 1:]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_dict

from memdyn import config as config_lib
from memdyn.data import run_data
from memdyn.data.feeder import Batch, Feeder
from memdyn.data.order import StepOrder
from memdyn.model import sharding
from memdyn.model.sizes import ModelShape
from memdyn.model.transformer import Transformer
from memdyn.studies.memsinks import masks as memsinks
from memdyn.studies.pos import counts as pos_lib
from memdyn.train import checkpoint, microbatches, objective, optimizer
from memdyn.train import metrics as metrics_lib


@dataclasses.dataclass
class Run:
    """Everything a run needs, built and validated before any compute."""

    config: config_dict.ConfigDict  # resolved
    data: run_data.RunData
    shape: ModelShape
    mesh: jax.sharding.Mesh
    rules: tuple[tuple[str, Any], ...]
    order: StepOrder | None  # None: a run without training data (an imported model)
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    param_shardings: Any
    opt_shardings: Any
    batch_sharding: NamedSharding  # every batch field: its leading (batch) dimension over the data-parallel axes
    replicated: NamedSharding
    abstract_params: Any  # ShapeDtypeStructs with shardings: the target of a restore
    abstract_opt_state: Any
    feeder: Feeder
    batch_metrics: tuple[Callable[..., dict[str, jax.Array]], ...] = ()
    tag_names: tuple[
        str, ...
    ] = ()  # parts of speech counted per step and evaluation (empty: none; memdyn.studies.pos.counts)
    token_tags_V: np.ndarray | None = None  # each token id's part of speech, for R(p)
    # Leading positions of every row that are the "document ID <id>" prefix (data.doc_ids=prefix), else 0. When
    # > 0 the steps also score the rows' content alone ("content_*" metrics: targets at positions >= this).
    content_start: int = 0

    def context(self):
        """Mesh and logical rules must be active whenever a memdyn function is traced."""
        return _Contexts(jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules))


class _Contexts:
    def __init__(self, *contexts):
        self._contexts = contexts

    def __enter__(self):
        for c in self._contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self._contexts):
            c.__exit__(*exc)


def build_model(shape: ModelShape, config: config_dict.ConfigDict) -> Transformer:
    return Transformer(
        shape,
        causal=config.model.causal,
        rngs=nnx.Rngs(params=config.seed),
        dtype=config.model.dtype,
        gated_layers=tuple(config.memsinks.layers),
        attention=config.model.attention,
        remat=config.model.remat,
        scan_layers=config.model.scan_layers,
        cpu_kernels=config.model.cpu_kernels,  # "auto": decided here, for JAX's default backend
    )


def build_run(
    config: config_dict.ConfigDict,
    data: run_data.RunData,
    devices: list[jax.Device] | None = None,
    batch_metrics: tuple[Callable, ...] = (),
) -> Run:
    """The run of ``config`` on the data and the devices; raises before compute on any bad value.

    ``config``: resolved (``memdyn.config.resolve``; ``memdyn train`` resolves once and passes it on), used as it is;
    or a plain config (a library caller's), resolved here against the data's vocabulary.
    """
    if not config_lib.is_resolved(config):
        config = config_lib.resolve(config, vocab_size=data.vocab_size)
    elif config.model.vocab_size < data.vocab_size:  # resolved against a stored run's vocabulary: the data must fit
        raise ValueError(
            f"the data's vocabulary has {data.vocab_size} ids but the run's model has "
            f"vocab_size={config.model.vocab_size} (config.model.size={config.model.size!r})"
        )
    if not config.model.causal and data.mask_id is None:
        raise ValueError(
            f"config.model.causal=False needs a <mask> token, and the vocabulary of "
            f"config.data.source={config.data.source!r} has none"
        )
    if data.train is not None and data.train.seq_len != config.data.seq_len:
        raise ValueError(
            f"config.data.seq_len={config.data.seq_len} but the example store "
            f"{data.train.path!r} holds sequences of {data.train.seq_len} tokens"
        )
    shape = config_lib.model_shape(config, config.model.vocab_size)  # the resolved shape, as config.model holds it
    rules = sharding.rules_from_config(config.sharding.rules)
    mesh = sharding.make_mesh(config.sharding.mesh, devices)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        dp = sharding.data_parallel_size(mesh)
        if config.batch_size % (dp * config.grad_accum):
            raise ValueError(
                f"config.batch_size={config.batch_size} is not divisible by the {dp} data-parallel "
                f"shards of mesh {dict(mesh.shape)}"
                + (f" times config.grad_accum={config.grad_accum} microbatches" if config.grad_accum > 1 else "")
            )
        abstract_model = nnx.eval_shape(lambda: build_model(shape, config))
        graphdef, abstract_state = nnx.split(abstract_model)
        param_specs = sharding.param_specs(abstract_state)
        param_shardings = sharding.named(mesh, param_specs)
        tx, schedule = optimizer.make_optimizer(config.optimizer, config.num_steps)
        abstract_params = nnx.to_pure_dict(abstract_state)
        replicated = NamedSharding(mesh, P())
        opt_shapes = jax.eval_shape(tx.init, abstract_params)
        opt_shardings = optax.tree_map_params(
            tx, lambda _, s: s, opt_shapes, param_shardings, transform_non_params=lambda _: replicated
        )
        batch_sharding = sharding.batch_sharding(mesh, 1)
    # An imported model has no training data: no order, and a feeder for the sources extraction reads.
    order = (
        None if data.train is None else StepOrder(data.train.num_examples, config.batch_size, config.data.order_seed)
    )
    tag_names, token_tags_V = _parts_of_speech(config, data)
    content_start = 0 if data.train is None else int(data.train.manifest.get("id_prefix_len", 0))
    return Run(
        config,
        data,
        shape,
        mesh,
        rules,
        order,
        graphdef,
        tx,
        schedule,
        param_shardings,
        opt_shardings,
        batch_sharding,
        replicated,
        checkpoint.abstract_like(abstract_params, param_shardings),
        checkpoint.abstract_like(opt_shapes, opt_shardings),
        Feeder(batch_sharding, data.pad_id, data.train, order),
        tuple(batch_metrics),
        tag_names,
        token_tags_V,
        content_start,
    )


def _parts_of_speech(config, data: run_data.RunData) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The tag names and each token's tag when ``config.eval.pos`` and the training store has tags."""
    train = data.train
    names = tuple(train.manifest.get("tag_names", ())) if train is not None else ()
    if not config.eval.get("pos", False) or train is None or train.tags is None or not names:
        return (), None
    return names, pos_lib.token_tags(train.tokens, train.tags, data.vocab_size, len(names))


def init_state(run: Run) -> tuple[Any, Any]:
    """Freshly initialised (params, opt_state), created directly in their shardings."""

    def init_params():
        return nnx.to_pure_dict(nnx.split(build_model(run.shape, run.config))[1])

    with run.context():
        params = jax.jit(init_params, out_shardings=run.param_shardings)()
        opt_state = jax.jit(run.tx.init, out_shardings=run.opt_shardings)(params)
    return params, opt_state


def make_forward(
    run: Run, memorization_metrics: bool = True, memsinks_mode: str = "train", excluded_ids=None
) -> Callable[..., dict[str, jax.Array]]:
    """forward(params, batch, step) -> token metrics of the run's objective (see metrics.token_metrics), the
    batch's ``example_ids_B`` and ``doc_ids_B``, the run's batch metrics, and ``loss_tokens`` (the number of
    positions the loss averages over).

    ``memorization_metrics=False`` returns the loss alone (the baseline of the metric-overhead benchmark).
    A MemSinks run (``config.memsinks``) gates the MLPs in ``memsinks_mode`` (``memdyn.studies.memsinks.masks``:
    "train" is
    the training mask; ``excluded_ids`` go with "exclude").
    """
    prepare, apply = forward_parts(run, memorization_metrics, memsinks_mode, excluded_ids)

    def forward(params, batch: Batch, step):
        return apply(params, batch, prepare(batch, step))

    return forward


def forward_parts(
    run: Run, memorization_metrics: bool = True, memsinks_mode: str = "train", excluded_ids=None
) -> tuple[Callable, Callable]:
    """``make_forward`` in two parts: ``prepare(batch, step)`` -> what the model reads besides the parameters
    (the objective's inputs, targets and weights, the MLP gates: a dict of arrays whose first axis is the batch's),
    and ``apply(params, batch, prepared)`` -> the metrics. Gradient accumulation prepares the whole batch once (a
    masked LM's masks are drawn for the whole batch, as without accumulation) and applies each microbatch."""
    config = run.config
    masking = objective.MaskingConfig(
        pad_id=run.data.pad_id,
        mask_id=run.data.mask_id,
        num_special=run.data.num_special,
        mask_prob=config.model.mask_prob,
        scored=config.model.mlm_scored,
    )
    base_key = jax.random.key(config.seed)

    sinks = memsinks.from_config(config)
    # Rows hold one sequence each unless a store gives per-token ids: then one gate per row [B, 1, F] suffices and
    # broadcasts over L inside the MLP's multiply (never materialized at [B, L, F]).
    one_sequence_per_row = all(store.seq_ids is None for store in run.data.evaluable().values())

    def prepare(batch: Batch, step) -> dict[str, jax.Array]:
        tokens_BxL = batch["tokens_BxL"]
        if config.model.causal:
            t = objective.causal_lm(tokens_BxL, masking.pad_id)
        else:  # masks are a pure function of (seed, step): resume and re-evaluation see the same masks
            t = objective.masked_lm(tokens_BxL, jax.random.fold_in(base_key, step), run.shape.vocab_size, masking)
        seq_ids_BxL = batch.get("seq_ids_BxL")  # the feeder's batches have them; a hand-made batch may not
        if seq_ids_BxL is not None:
            seq_ids_BxL = seq_ids_BxL[:, : t.inputs_BxL.shape[1]]
        gate_ids = seq_ids_BxL[:, :1] if one_sequence_per_row and seq_ids_BxL is not None else seq_ids_BxL
        gate_BxLxF, grad_gate_BxLxF = _mlp_gates(
            sinks, config.memsinks, batch, gate_ids, step, memsinks_mode, excluded_ids
        )
        return {
            "inputs_BxL": t.inputs_BxL,
            "targets_BxL": t.targets_BxL,
            "loss_weights_BxL": t.loss_weights_BxL,
            "score_weights_BxL": t.score_weights_BxL,
            "seq_ids_BxL": seq_ids_BxL,
            "gate_BxLxF": gate_BxLxF,
            "grad_gate_BxLxF": grad_gate_BxLxF,
        }

    def apply(params, batch: Batch, t: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(run.graphdef, nnx.State(params))
        logits = model(
            t["inputs_BxL"],
            valid_BxL=t["inputs_BxL"] != masking.pad_id,
            mlp_gate_BxLxF=t["gate_BxLxF"],
            segment_ids_BxL=t["seq_ids_BxL"],
            mlp_grad_gate_BxLxF=t["grad_gate_BxLxF"],
        )
        targets_BxL, loss_weights_BxL, score_weights_BxL = (
            t["targets_BxL"],
            t["loss_weights_BxL"],
            t["score_weights_BxL"],
        )
        loss_tokens = loss_weights_BxL.sum()
        if not memorization_metrics:
            return {"loss": metrics_lib.mean_loss(logits, targets_BxL, loss_weights_BxL), "loss_tokens": loss_tokens}
        subsets = {}
        if run.content_start:  # target index t is token t + 1 (causal) or t (masked): either way t >= prefix
            content_L = jnp.arange(targets_BxL.shape[1]) >= run.content_start
            subsets["content"] = score_weights_BxL * content_L
        pos = bool(run.tag_names) and "tags_BxL" in batch
        predicted_BxL = metrics_lib.first_argmax(logits) if pos else None  # POS needs the tokens themselves
        out = metrics_lib.token_metrics(
            logits, targets_BxL, loss_weights_BxL, score_weights_BxL, subsets, predicted_BxL
        )
        if pos:
            tags_BxL = batch["tags_BxL"][:, 1:] if config.model.causal else batch["tags_BxL"]  # the targets' tags
            out.update(
                pos_lib.tag_counts(
                    predicted_BxL,
                    targets_BxL,
                    tags_BxL,
                    score_weights_BxL,
                    jnp.asarray(run.token_tags_V),
                    len(run.tag_names),
                )
            )
        for batch_metric in run.batch_metrics:
            out.update(batch_metric(batch, logits, targets_BxL, score_weights_BxL))
        return dict(out, example_ids_B=batch["example_ids_B"], doc_ids_B=batch["doc_ids_B"], loss_tokens=loss_tokens)

    return prepare, apply


def _mlp_gates(
    sinks: memsinks.Sinks | None, cfg: config_dict.ConfigDict, batch: Batch, seq_ids_BxL, step, mode: str, excluded_ids
):
    """(gate, gradient gate) of the MLP hidden units, [B, L, F] each (or [B, 1, F] from ids [B, 1]) or None,
    sharded like the hidden units."""
    if sinks is None:
        return None, None
    if seq_ids_BxL is None:
        raise ValueError("a MemSinks run needs the batch's seq_ids_BxL (batches from memdyn.data.feeder have them)")
    names = ("batch", "length", "act_mlp")
    if cfg.ids == "placebo":  # the same pool and density, ids drawn afresh for every (update, row)
        ids_B = memsinks.placebo_ids(step, seq_ids_BxL.shape[0])
        seq_ids_BxL = jnp.broadcast_to(ids_B[:, None], seq_ids_BxL.shape)
    gate = sinks.gate(seq_ids_BxL, mode, excluded_ids)
    gate = None if gate is None else sharding.constrain(gate, names)
    if sinks.method != "shared" or mode != "train":
        return gate, None
    # Section 4's gradient masking: repeated rows (dup_counts > 1) update only the pool, the others only the
    # general units.
    repeated_Bx1x1 = (batch["dup_counts_B"] > 1)[:, None, None]
    in_pool_F = jnp.arange(sinks.d_ff) >= sinks.general
    grad_gate = jnp.broadcast_to(repeated_Bx1x1 == in_pool_F, seq_ids_BxL.shape + (sinks.d_ff,))
    return gate, sharding.constrain(grad_gate.astype(jnp.float32), names)


def sequence_gates(run: Run, batch: Batch, mode: str = "train", excluded_ids=None) -> jax.Array | None:
    """Per-sequence MLP gates [B, F] of a MemSinks run in ``mode`` (None: no gate), for extraction, where a
    row's gate is the same at every position."""
    sinks = memsinks.from_config(run.config)
    if sinks is None:
        return None
    gate_Bx1xF, _ = _mlp_gates(sinks, run.config.memsinks, batch, batch["seq_ids_BxL"][:, :1], 0, mode, excluded_ids)
    return None if gate_Bx1xF is None else gate_Bx1xF[:, 0]


def make_train_step(run: Run, memorization_metrics: bool = True) -> Callable:
    """The jitted step: (params, opt_state, batch, update) -> (params, opt_state, metrics). State is donated.

    ``update`` counts every update, inserted ones included; it indexes the lr schedule (as optax's own count
    does) and the masked-LM masks.
    """
    prepare, apply = forward_parts(run, memorization_metrics)
    num_microbatches = run.config.grad_accum

    def train_step(params, opt_state, batch, update):
        prepared = prepare(batch, update)
        if num_microbatches == 1:

            def loss_fn(p):
                m = apply(p, batch, prepared)
                return m["loss"], m

            grads, m = jax.grad(loss_fn, has_aux=True)(params)
        else:
            grads, m = microbatches.accumulated_grads(apply, params, batch, prepared, num_microbatches)
        updates, opt_state = run.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        m = dict(m, grad_norm=optax.tree.norm(grads), lr=run.schedule(update))
        return params, opt_state, m

    return jax.jit(
        train_step,
        in_shardings=(run.param_shardings, run.opt_shardings, run.batch_sharding, run.replicated),
        out_shardings=(run.param_shardings, run.opt_shardings, run.replicated),
        donate_argnums=(0, 1),
    )


def make_eval_step(run: Run, memsinks_mode: str = "train", excluded_ids=None) -> Callable:
    """Jitted forward for evaluation: (params, batch, mask_index) -> token metrics, nothing donated.

    ``memsinks_mode`` / ``excluded_ids``: the MLP gates of a MemSinks run (see ``make_forward``)."""
    return jax.jit(
        make_forward(run, memsinks_mode=memsinks_mode, excluded_ids=excluded_ids),
        in_shardings=(run.param_shardings, run.batch_sharding, run.replicated),
        out_shardings=run.replicated,
    )
