"""Train state, the jitted train step and the training loop.

The state is a pair of pure pytrees (params, opt_state) sharded by logical axis rules; the model's structure (an
NNX GraphDef) is static. One ``jax.jit`` with explicit in/out shardings and donated state runs forward, backward,
the optimizer update and the memorization metrics of the same logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_dict

from memdyn import config as config_lib
from memdyn import metrics as metrics_lib
from memdyn import objective, plots, sharding, writers
from memdyn.data import sources
from memdyn.data.order import StepOrder
from memdyn.model import Transformer
from memdyn.sizes import ModelShape

TRAIN_CSV_COLUMNS = ("step", "epoch", "epochs_done", "examples_seen", "tokens_seen", "loss", "mem_update", "lr",
                     "grad_norm", "num_tokens", "steps_per_sec", "size", "params", "causal", "seed", "peak_lr",
                     "batch_size", "seq_len")


def make_schedule(opt: config_dict.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``opt.lr``, then constant / linear / cosine / polynomial decay to the end."""
    warmup = int(opt.warmup_steps)
    decay_steps = max(num_steps - warmup, 1)
    end = opt.lr * opt.end_lr_fraction
    main = {
        "constant": optax.constant_schedule(opt.lr),
        "linear": optax.linear_schedule(opt.lr, end, decay_steps),
        "cosine": optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_fraction),
        "polynomial": optax.polynomial_schedule(opt.lr, end, opt.power, decay_steps),
    }[opt.schedule]
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])


def make_optimizer(opt: config_dict.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation,
                                                                          optax.Schedule]:
    schedule = make_schedule(opt, num_steps)
    # Decay matrices only (kernels, embeddings), never biases or layer-norm parameters.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                        mask=decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw) if opt.grad_clip > 0 else adamw
    return tx, schedule


@dataclasses.dataclass
class Run:
    """Everything a run needs, built and validated before any compute."""
    config: config_dict.ConfigDict  # resolved
    data: sources.RunData
    shape: ModelShape
    mesh: jax.sharding.Mesh
    rules: tuple[tuple[str, Any], ...]
    order: StepOrder
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    param_shardings: Any
    opt_shardings: Any
    batch_sharding: NamedSharding
    replicated: NamedSharding

    def context(self):
        """Mesh and logical rules must be active whenever a memdyn function is traced."""
        return _Contexts(jax.set_mesh(self.mesh), sharding.use_rules(self.rules))


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
    return Transformer(shape, causal=config.model.causal, rngs=nnx.Rngs(params=config.seed),
                       dtype=config.model.dtype)


def build_run(config: config_dict.ConfigDict, data: sources.RunData,
              devices: list[jax.Device] | None = None) -> Run:
    """Resolves the config against the data and the devices; raises before compute on any bad value."""
    config = config_lib.resolve(config, vocab_size=data.vocab_size)
    if data.train.seq_len != config.data.seq_len:
        raise ValueError(f"config.data.seq_len={config.data.seq_len} but the example store "
                         f"{data.train.path!r} holds sequences of {data.train.seq_len} tokens")
    shape = config_lib.model_shape(config, data.vocab_size)
    rules = sharding.rules_from_config(config.sharding.rules)
    mesh = sharding.make_mesh(config.sharding.mesh, devices)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        dp = sharding.data_parallel_size(mesh)
        if config.batch_size % dp:
            raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {dp} data-parallel "
                             f"shards of mesh {dict(mesh.shape)}")
        abstract_model = nnx.eval_shape(lambda: build_model(shape, config))
        graphdef, abstract_state = nnx.split(abstract_model)
        param_specs = sharding.param_specs(abstract_state)
        param_shardings = sharding.named(mesh, param_specs)
        tx, schedule = make_optimizer(config.optimizer, config.num_steps)
        abstract_params = nnx.to_pure_dict(abstract_state)
        replicated = NamedSharding(mesh, P())
        opt_shapes = jax.eval_shape(tx.init, abstract_params)
        opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, param_shardings,
                                              transform_non_params=lambda _: replicated)
        batch_sharding = sharding.batch_sharding(mesh, 2)
    order = StepOrder(data.train.num_examples, config.batch_size, config.data.order_seed)
    return Run(config, data, shape, mesh, rules, order, graphdef, tx, schedule, param_shardings, opt_shardings,
               batch_sharding, replicated)


def init_state(run: Run) -> tuple[Any, Any]:
    """Freshly initialised (params, opt_state), created directly in their shardings."""
    def init_params():
        return nnx.to_pure_dict(nnx.split(build_model(run.shape, run.config))[1])
    with run.context():
        params = jax.jit(init_params, out_shardings=run.param_shardings)()
        opt_state = jax.jit(run.tx.init, out_shardings=run.opt_shardings)(params)
    return params, opt_state


def make_forward(run: Run, memorization_metrics: bool = True) -> Callable[..., dict[str, jax.Array]]:
    """forward(params, tokens_BxL, step) -> token metrics of the run's objective (see metrics.token_metrics).

    ``memorization_metrics=False`` returns the loss alone (the baseline of the metric-overhead benchmark).
    """
    config = run.config
    masking = objective.MaskingConfig(pad_id=run.data.pad_id, mask_id=run.data.mask_id,
                                      num_special=run.data.num_special, mask_prob=config.model.mask_prob)
    base_key = jax.random.key(config.seed)

    def forward(params, tokens_BxL, step, mlp_gate_BxLxF=None):
        if config.model.causal:
            inputs, targets, weights = objective.causal_lm(tokens_BxL, masking.pad_id)
        else:  # masks are a pure function of (seed, step): resume and re-evaluation see the same masks
            inputs, targets, weights = objective.masked_lm(tokens_BxL, jax.random.fold_in(base_key, step),
                                                           run.shape.vocab_size, masking)
        model = nnx.merge(run.graphdef, nnx.State(params))
        logits = model(inputs, valid_BxL=inputs != masking.pad_id, mlp_gate_BxLxF=mlp_gate_BxLxF)
        if not memorization_metrics:
            return {"loss": metrics_lib.mean_loss(logits, targets, weights)}
        return metrics_lib.token_metrics(logits, targets, weights)

    return forward


def make_train_step(run: Run, memorization_metrics: bool = True) -> Callable:
    """The jitted step: (params, opt_state, tokens_BxL, step) -> (params, opt_state, metrics). State is donated."""
    forward = make_forward(run, memorization_metrics)

    def train_step(params, opt_state, tokens_BxL, step):
        def loss_fn(p):
            m = forward(p, tokens_BxL, step)
            return m["loss"], m
        grads, m = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = run.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        m = dict(m, grad_norm=optax.tree.norm(grads), lr=run.schedule(step))
        return params, opt_state, m

    return jax.jit(train_step,
                   in_shardings=(run.param_shardings, run.opt_shardings, run.batch_sharding, run.replicated),
                   out_shardings=(run.param_shardings, run.opt_shardings, run.replicated),
                   donate_argnums=(0, 1))


def device_batch(run: Run, step: int) -> tuple[jax.Array, dict[str, np.ndarray]]:
    """Global batch of ``step`` as a sharded array [B, L], and its host-side rows (ids, tokens)."""
    rows = run.data.train.rows(run.order.rows(step))
    # Each process passes only its addressable rows; with one process that is the whole batch.
    tokens = jax.make_array_from_process_local_data(run.batch_sharding, rows["tokens"],
                                                    global_shape=rows["tokens"].shape)
    return tokens, rows


class Trainer:
    """The training loop of one run in one workdir."""

    def __init__(self, run: Run, workdir: str):
        self.run = run
        self.workdir = workdir
        self.step_fn = make_train_step(run)
        c = run.config
        self.identity = {"size": c.model.size, "params": c.model.params, "causal": c.model.causal, "seed": c.seed,
                         "peak_lr": c.optimizer.lr, "batch_size": c.batch_size, "seq_len": c.data.seq_len}

    def train(self, params=None, opt_state=None, start_step: int = 0) -> dict[str, float]:
        run, c = self.run, self.run.config
        if params is None:
            params, opt_state = init_state(run)
        csv_writer = writers.CsvWriter(os.path.join(self.workdir, "train.csv"), TRAIN_CSV_COLUMNS)
        records = writers.ExampleRecordWriter(os.path.join(self.workdir, "examples"))
        tensorboard = writers.TensorBoardWriter(os.path.join(self.workdir, "tensorboard"))
        self._progress = _Progress(start_step, c.num_steps)
        self._tokens_seen = 0
        last = {}
        try:
            with run.context():
                pending = None
                for step in range(start_step, c.num_steps):
                    tokens, rows = device_batch(run, step)
                    params, opt_state, metrics = self.step_fn(params, opt_state, tokens, np.int32(step))
                    if pending is not None:  # fetch step t-1 only after step t is dispatched
                        last = self._record(*pending, csv_writer, records, tensorboard)
                    pending = (step, metrics, rows)
                if pending is not None:
                    last = self._record(*pending, csv_writer, records, tensorboard)
        finally:
            csv_writer.close()
            records.close()
            tensorboard.close()
        self.params, self.opt_state = params, opt_state
        return last

    def _record(self, step, metrics, rows, csv_writer, records, tensorboard) -> dict[str, float]:
        c, order = self.run.config, self.run.order
        m = jax.device_get(metrics)
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step} (config.optimizer.lr={c.optimizer.lr}); "
                                     "stopping")
        self._tokens_seen += int((rows["tokens"] != self.run.data.pad_id).sum())
        steps_per_sec = self._progress.update(step, loss, float(m["mem_update"]))
        if c.record_examples:
            records.add(step, rows["example_ids"], m["exact_match_B"], m["loss_B"], m["num_tokens_B"])
        row = {"step": step, "epoch": order.epoch(step), "epochs_done": (step + 1) / order.steps_per_epoch,
               "examples_seen": (step + 1) * c.batch_size, "tokens_seen": self._tokens_seen, "loss": loss,
               "mem_update": float(m["mem_update"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
               "num_tokens": int(m["num_tokens"]), "steps_per_sec": steps_per_sec, **self.identity}
        if step % c.log_every == 0 or step == c.num_steps - 1:
            csv_writer.write([row])
            tensorboard.write_scalars(step, {k: row[k] for k in ("loss", "mem_update", "lr", "grad_norm")})
        return row


class _Progress:
    """steps/s over the recent window and an ETA, logged every few seconds."""

    def __init__(self, start_step: int, num_steps: int, every_s: float = 5.0):
        self.num_steps, self.every_s = num_steps, every_s
        self.window_start = (time.perf_counter(), start_step)
        self.last_log = time.perf_counter()
        self.rate = float("nan")

    def update(self, step: int, loss: float, mem_update: float) -> float:
        now = time.perf_counter()
        t0, s0 = self.window_start
        if step > s0 and now > t0:
            self.rate = (step - s0) / (now - t0)
        if now - t0 > 10.0:  # slide the window so the rate tracks the current speed
            self.window_start = (now, step)
        done = step + 1 == self.num_steps
        if now - self.last_log >= self.every_s or done:
            self.last_log = now
            eta = (self.num_steps - step - 1) / self.rate if self.rate > 0 else float("nan")
            logging.info("step %d/%d  loss %.4f  mem_update %.4f  %.2f steps/s  ETA %s", step + 1, self.num_steps,
                         loss, mem_update, self.rate, _duration(eta))
        return self.rate


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def check_workdir(config: config_dict.ConfigDict, workdir: str) -> None:
    """Refuses a workdir that already holds a run, naming the config fields that differ; nothing is touched."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    resolved = config_lib.resolve(config, vocab_size=stored["model"]["vocab_size"])
    diff = config_lib.differences(stored, json.loads(config_lib.to_json(resolved)))
    if diff:
        raise ValueError(f"--workdir={workdir!r} holds a run with a different config: " + "; ".join(diff[:10]))
    raise FileExistsError(f"--workdir={workdir!r} already holds this run (config.json, train.csv); choose a "
                          "new --workdir, or delete the old one")


def write_config(config: config_dict.ConfigDict, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_lib.to_json(config))
    os.replace(tmp, path)


def train(config: config_dict.ConfigDict, workdir: str) -> dict[str, float]:
    """``memdyn train``: validate, prepare data, build the run (all before compute), then train."""
    config_lib.validate(config)
    check_workdir(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    data = sources.prepare(config, workdir)
    run = build_run(config, data)
    write_config(run.config, workdir)
    logging.info("model %s: %s params, %d layers x d_model %d; mesh %s; %d examples, %d steps/epoch",
                 run.config.model.size, f"{run.config.model.params:,}", run.shape.num_layers, run.shape.d_model,
                 dict(run.mesh.shape), data.train.num_examples, run.order.steps_per_epoch)
    summary = Trainer(run, workdir).train()
    plots.plot_training(os.path.join(workdir, "train.csv"), os.path.join(workdir, "train.png"))
    return summary
