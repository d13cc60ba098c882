"""The same config gives the same losses on 1 device and on 8 simulated devices under several meshes."""

import json

import pytest

from conftest import run_python

_WORKER = r"""
import json, tempfile, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import tiny_config
from memdyn.train import steps
from memdyn.train import loop
from memdyn.data import build

MESHES = [None, (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]
config = tiny_config(**{"model.size": "tiny", "model.num_layers": 2, "batch_size": 8})
data = build.prepare(config, tempfile.mkdtemp())
out = {}
for mesh in MESHES:
    c = tiny_config(**{"model.size": "tiny", "model.num_layers": 2, "batch_size": 8})
    if mesh is not None:
        c.sharding.mesh = mesh
    devices = jax.devices()[:1] if mesh is None else jax.devices()
    if mesh is None:
        c.sharding.mesh = (1, 1, 1)
    run = steps.build_run(c, data, devices)
    params, opt_state = steps.init_state(run)
    step_fn = steps.make_train_step(run)
    losses = []
    with run.context():
        for step in range(4):
            batch = run.feeder.train_batch(step)
            params, opt_state, m = step_fn(params, opt_state, batch, np.int32(step))
            losses.append([float(m["loss"]), float(m["mem_update"]), float(m["grad_norm"])])
    specs = {
        "embed": str(params["embed"].sharding.spec),
        "mlp_in": str(params["block_00"]["mlp"]["in_kernel"].sharding.spec),
        "mu_mlp_in": str(jax.tree.leaves(opt_state[1][0].mu["block_00"]["mlp"]["in_kernel"])[0].sharding.spec),
        "devices": len(params["embed"].sharding.device_set),
    }
    out[str(mesh)] = {"losses": losses, "specs": specs, "tokens": str(batch["tokens_BxL"].sharding.spec)}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_losses_equal_across_meshes():
    proc = run_python(_WORKER, devices=8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    reference = result["None"]["losses"]
    for mesh, r in result.items():
        for got, want in zip(r["losses"], reference):
            for g, w in zip(got, want):
                assert abs(g - w) <= 1e-4 * max(1.0, abs(w)), (mesh, got, want)
    # the state really is sharded the way the rules say
    assert result["(2, 2, 2)"]["specs"]["embed"] == "P('tensor', 'fsdp')"
    assert result["(1, 2, 4)"]["specs"]["mlp_in"] == "P('fsdp', 'tensor')"
    assert result["(1, 2, 4)"]["specs"]["mu_mlp_in"] == "P('fsdp', 'tensor')"
    assert result["(2, 4, 1)"]["tokens"] == "P(('data', 'fsdp'),)"
    assert result["(8, 1, 1)"]["specs"]["devices"] == 8
    assert result["None"]["specs"]["devices"] == 1
    # training moved the loss, so equality is not trivially of constants
    assert reference[-1][0] < reference[0][0]


@pytest.mark.slow
def test_scanned_model_with_microbatches_gives_the_same_losses_across_meshes():
    """model.scan_layers (stacked blocks: a leading, unsharded layers axis) with grad_accum=2, on the same meshes."""
    worker = _WORKER.replace(
        '"batch_size": 8}', '"batch_size": 16, "model.scan_layers": True, "grad_accum": 2}'
    ).replace('["block_00"]', '["blocks"]')
    assert worker.count('"model.scan_layers": True') == 2
    proc = run_python(worker, devices=8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    reference = result["None"]["losses"]
    for mesh, r in result.items():
        for got, want in zip(r["losses"], reference):
            for g, w in zip(got, want):
                assert abs(g - w) <= 1e-4 * max(1.0, abs(w)), (mesh, got, want)
    assert result["(1, 2, 4)"]["specs"]["mlp_in"] == "P(None, 'fsdp', 'tensor')"
    assert result["(1, 2, 4)"]["specs"]["mu_mlp_in"] == "P(None, 'fsdp', 'tensor')"
    assert reference[-1][0] < reference[0][0]


def test_logical_names_follow_flax_rules_and_the_defaults_outside_them():
    """Activations and parameter specs read the rules Flax holds (``nnx.logical_axis_rules``, as ``Run.context``
    sets them); with none set, ``sharding.DEFAULT_RULES``."""
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from memdyn.model import sharding, sizes
    from memdyn.model.transformer import Transformer

    shape = sizes.ModelShape(num_layers=1, d_model=8, num_heads=2, d_ff=16, vocab_size=32, max_len=8)
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(shape, causal=True, rngs=nnx.Rngs(0))))[1]
    names = ("batch", "length", "act_mlp")
    assert sharding.active_rules() == sharding.DEFAULT_RULES
    assert sharding.logical_to_spec(names) == P(("data", "fsdp"), None, "tensor")
    assert sharding.param_specs(abstract)["embed"] == P("tensor", "fsdp")
    rules = sharding.rules_from_config([("batch", "data"), ("act_mlp", None), ("vocab", None), ("embed", "tensor")])
    with nnx.logical_axis_rules(rules):
        assert sharding.active_rules() == rules
        assert sharding.logical_to_spec(names) == P("data", None, None)
        assert sharding.param_specs(abstract)["embed"] == P(None, "tensor")
    assert sharding.active_rules() == sharding.DEFAULT_RULES
