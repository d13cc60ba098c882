"""Multi-process data loading: two JAX processes (2 simulated CPU devices each) read only their own rows of each
batch, assemble the same global batch as one process does, and train to the same losses as one process with 4
devices."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import REPO, tiny_config
from memdyn.data import sources

MESHES = [(4, 1, 1), (2, 1, 2), (1, 1, 4)]  # batch split 4 ways / 2 ways (x2 tensor) / replicated
TRAIN_MESH = (4, 1, 1)
TRAIN_STEPS = 2

# argv: process_id num_processes port workdir out_path. Builds the same runs in every process, records what
# device_batch read and the global batch it assembled, then trains TRAIN_STEPS steps.
_CHILD = r'''
import json, sys
sys.path.insert(0, "tests")
import jax
process_id, num_processes, port, workdir, out_path = sys.argv[1:]
process_id, num_processes = int(process_id), int(num_processes)
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
if num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id,
                               initialization_timeout=60)
import numpy as np
from conftest import tiny_config
from memdyn import core
from memdyn.data import sources

MESHES, TRAIN_MESH, TRAIN_STEPS = %(meshes)r, %(train_mesh)r, %(train_steps)r
out = {"devices": jax.device_count(), "local_devices": jax.local_device_count(), "batches": {}, "losses": []}
for mesh in MESHES:
    config = tiny_config()
    config.sharding.mesh = mesh
    run = core.build_run(config, sources.prepare(config, workdir))  # reuses the store the parent built
    gather = jax.jit(lambda x: x, out_shardings=run.replicated)  # global batch, whole on every device
    with run.context():
        for step in (0, 1, run.order.steps_per_epoch):  # the last one is in the next epoch's permutation
            tokens, rows = core.device_batch(run, step)
            out["batches"][f"{mesh}/{step}"] = {
                "global": np.asarray(gather(tokens)).tolist(),
                "read_ids": rows["example_ids"].tolist(),
                "read_tokens": rows["tokens"].tolist(),
                "reference": run.data.train.rows(run.order.rows(step))["tokens"].tolist(),
                "reference_ids": run.data.train.rows(run.order.rows(step))["example_ids"].tolist(),
            }
    if mesh == TRAIN_MESH:
        params, opt_state = core.init_state(run)
        step_fn = core.make_train_step(run)
        with run.context():
            for step in range(TRAIN_STEPS):
                tokens, _ = core.device_batch(run, step)
                params, opt_state, m = step_fn(params, opt_state, tokens, np.int32(step))
                out["losses"].append([float(m["loss"]), float(m["grad_norm"])])
with open(out_path, "w") as f:
    json.dump(out, f)
if num_processes > 1:
    jax.distributed.shutdown()
''' % {"meshes": MESHES, "train_mesh": TRAIN_MESH, "train_steps": TRAIN_STEPS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_children(tmp_path, specs, timeout: float = 120.0) -> list[dict]:
    """Starts one child per (process_id, num_processes, local_devices) and waits for all; on a failure or a
    timeout kills the rest (one that waits on a dead peer would hang) and fails with every child's stderr."""
    port = _free_port()
    procs = []
    for i, (process_id, num_processes, devices) in enumerate(specs):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                   TF_CPP_MIN_LOG_LEVEL="2")
        log = open(tmp_path / f"child{i}.log", "w")
        args = [sys.executable, "-c", _CHILD, str(process_id), str(num_processes), str(port), str(tmp_path),
                str(tmp_path / f"child{i}.json")]
        procs.append((subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        if any(p.poll() not in (None, 0) for p, _ in procs):
            break
        time.sleep(0.2)
    for p, log in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()
    if any(p.returncode != 0 for p, _ in procs):
        logs = "\n".join(f"--- child {i} (rc {p.returncode}) ---\n" + (tmp_path / f"child{i}.log").read_text()[-3000:]
                         for i, (p, _) in enumerate(procs))
        raise AssertionError(f"a child process failed or timed out after {timeout:.0f}s:\n{logs}")
    return [json.loads((tmp_path / f"child{i}.json").read_text()) for i in range(len(specs))]


def test_two_processes_read_their_rows_and_train_like_one(tmp_path):
    config = tiny_config()
    sources.prepare(config, str(tmp_path))  # the store is built once, here; the children reuse it
    # two processes of 2 devices each, and one process of 4 devices as the reference
    proc0, proc1, single = _run_children(tmp_path, [(0, 2, 2), (1, 2, 2), (0, 1, 4)])
    assert proc0["devices"] == proc1["devices"] == single["devices"] == 4
    assert proc0["local_devices"] == proc1["local_devices"] == 2

    for key, ref in single["batches"].items():
        reference = np.asarray(ref["reference"])
        batch_size = len(reference)
        # one process: the whole batch, in order, unchanged
        np.testing.assert_array_equal(ref["global"], reference)
        np.testing.assert_array_equal(ref["read_tokens"], reference)
        assert ref["read_ids"] == ref["reference_ids"]
        mesh = key.split("/")[0]
        reads = []
        for p in (proc0, proc1):
            b = p["batches"][key]
            # every process assembles the same global batch as the single process computed
            np.testing.assert_array_equal(b["global"], reference, err_msg=key)
            assert b["reference_ids"] == ref["reference_ids"], key
            reads.append(b["read_ids"])
        if mesh == str((1, 1, 4)):  # the batch is replicated: every process needs (and reads) all of it
            assert reads == [ref["reference_ids"]] * 2, key
        else:  # each process reads only its half, the halves in global batch order
            assert [len(r) for r in reads] == [batch_size // 2] * 2, (key, reads)
            assert reads[0] + reads[1] == ref["reference_ids"], (key, reads)
            np.testing.assert_array_equal(proc0["batches"][key]["read_tokens"], reference[:batch_size // 2])

    assert len(single["losses"]) == TRAIN_STEPS
    for p in (proc0, proc1):
        np.testing.assert_allclose(p["losses"], single["losses"], rtol=1e-5, atol=1e-5)
