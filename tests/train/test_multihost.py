"""Multi-process training: two JAX processes (2 simulated CPU devices each) read only their own rows of each
batch, assemble the same global batch as one process does, and train to the same losses as one process with 4
devices; `memdyn train` in two processes writes one set of result files equal to a one-process run's."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_memdyn, tiny_config
from memdyn.data import build
from memdyn.train import writers

MESHES = [(4, 1, 1), (2, 1, 2), (1, 1, 4)]  # batch split 4 ways / 2 ways (x2 tensor) / replicated
TRAIN_MESH = (4, 1, 1)
TRAIN_STEPS = 2

# argv: process_id num_processes port workdir out_path. Builds the same runs in every process, records what
# the feeder read and the global batch it assembled, then trains TRAIN_STEPS steps.
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
from memdyn.train import steps as core
from memdyn.data import build

MESHES, TRAIN_MESH, TRAIN_STEPS = %(meshes)r, %(train_mesh)r, %(train_steps)r


def local_rows(array):
    """The distinct rows this process's devices hold, in global order: what its feeder read."""
    shards = {s.index[0].indices(array.shape[0]): np.asarray(s.data) for s in array.addressable_shards}
    return np.concatenate([shards[k] for k in sorted(shards)])

out = {"devices": jax.device_count(), "local_devices": jax.local_device_count(), "batches": {}, "losses": []}
for mesh in MESHES:
    config = tiny_config()
    config.sharding.mesh = mesh
    run = core.build_run(config, build.prepare(config, workdir))  # reuses the store the parent built
    gather = jax.jit(lambda x: x, out_shardings=run.replicated)  # global batch, whole on every device
    with run.context():
        for step in (0, 1, run.order.steps_per_epoch):  # the last one is in the next epoch's permutation
            batch = run.feeder.train_batch(step)
            out["batches"][f"{mesh}/{step}"] = {
                "global": np.asarray(gather(batch["tokens_BxL"])).tolist(),
                "read_ids": local_rows(batch["example_ids_B"]).tolist(),
                "read_tokens": local_rows(batch["tokens_BxL"]).tolist(),
                "reference": run.data.train.rows(run.order.rows(step))["tokens"].tolist(),
                "reference_ids": run.data.train.rows(run.order.rows(step))["example_ids"].tolist(),
            }
    if mesh == TRAIN_MESH:
        params, opt_state = core.init_state(run)
        step_fn = core.make_train_step(run)
        with run.context():
            for step in range(TRAIN_STEPS):
                params, opt_state, m = step_fn(params, opt_state, run.feeder.train_batch(step), np.int32(step))
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
    """Runs _CHILD once per (process_id, num_processes, local_devices); returns what each child wrote."""
    port = _free_port()
    _run_processes(
        tmp_path,
        [
            (
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    str(process_id),
                    str(num_processes),
                    str(port),
                    str(tmp_path),
                    str(tmp_path / f"child{i}.json"),
                ],
                devices,
            )
            for i, (process_id, num_processes, devices) in enumerate(specs)
        ],
        timeout,
    )
    return [json.loads((tmp_path / f"child{i}.json").read_text()) for i in range(len(specs))]


def _run_processes(tmp_path, commands, timeout: float) -> None:
    """Starts one process per (argv, local_devices) and waits for all; on a failure or a timeout kills the rest
    (one that waits on a dead peer would hang) and fails with every child's output."""
    procs = []
    for i, (args, devices) in enumerate(commands):
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
            JAX_PLATFORMS="cpu",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        log = open(tmp_path / f"child{i}.log", "w")
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
        logs = "\n".join(
            f"--- child {i} (rc {p.returncode}) ---\n" + (tmp_path / f"child{i}.log").read_text()[-3000:]
            for i, (p, _) in enumerate(procs)
        )
        raise AssertionError(f"a child process failed or timed out after {timeout:.0f}s:\n{logs}")


@pytest.mark.slow
def test_two_processes_read_their_rows_and_train_like_one(tmp_path):
    config = tiny_config()
    build.prepare(config, str(tmp_path))  # the store is built once, here; the children reuse it
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
            np.testing.assert_array_equal(proc0["batches"][key]["read_tokens"], reference[: batch_size // 2])

    assert len(single["losses"]) == TRAIN_STEPS
    for p in (proc0, proc1):
        np.testing.assert_allclose(p["losses"], single["losses"], rtol=1e-5, atol=1e-5)


# tiny_config as flags, with an insertion before step 2, evaluations every 2 steps and checkpoints every 4
TRAIN_FLAGS = [
    "--config.model.size=nano",
    "--config.batch_size=8",
    "--config.data.seq_len=32",
    "--config.optimizer.warmup_steps=2",
    "--config.data.synthetic.vocab_size=256",
    "--config.data.synthetic.num_train_docs=40",
    "--config.data.synthetic.num_validation_docs=8",
    "--config.data.special_docs=3",
    "--config.eval.every=2",
    "--config.checkpoint.every=4",
    "--config.insert.at_step=2",
    "--config.insert.eval_every=2",
    "--config.sharding.mesh=(4,1,1)",
]


def _result_files(workdir) -> list[str]:
    """The run's files outside checkpoints/, data/ and the directories of numbered parts and events."""
    found = []
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "data")]
        rel = os.path.relpath(root, workdir)
        found += [
            os.path.normpath(os.path.join(rel, f))
            for f in files
            if rel not in ("examples", "eval_examples", "tensorboard")
        ]
    return sorted(found)


def _assert_frames_close(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    """Same columns and rows: floats to 1e-5, everything else (steps, counts, ids, set names) exactly."""
    floats = [c for c in a.columns if a[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(a.drop(columns=floats), b.drop(columns=floats), check_exact=True, obj=name)
    pd.testing.assert_frame_equal(a[floats], b[floats], check_exact=False, rtol=1e-5, atol=1e-5, obj=name)


@pytest.mark.slow
def test_memdyn_train_in_two_processes_writes_what_one_process_writes(tmp_path):
    """Two processes train 6 steps then resume to 8; one process trains 8 steps. Same results, one set of files."""
    one, two = str(tmp_path / "one" / "run"), str(tmp_path / "two" / "run")  # same name: the `run` column
    train = [sys.executable, "-m", "memdyn", "train", *TRAIN_FLAGS]

    def two_processes(num_steps):
        multi = [
            f"--workdir={two}",
            f"--config.num_steps={num_steps}",
            f"--coordinator=127.0.0.1:{_free_port()}",
            "--num_processes=2",
        ]
        return [([*train, *multi, f"--process_id={i}"], 2) for i in range(2)]

    _run_processes(
        tmp_path, [([*train, f"--workdir={one}", "--config.num_steps=8"], 4), *two_processes(6)], timeout=150.0
    )
    _run_processes(tmp_path, two_processes(8), timeout=90.0)  # resumes from checkpoint 6

    assert _result_files(two) == _result_files(one)
    assert {"config.json", "train.csv", "eval.csv", "insertions.csv", "train.png"} <= set(_result_files(one))
    assert len(os.listdir(os.path.join(two, "tensorboard"))) == 2  # one events file per run of process 0
    assert all(
        f.startswith("part-") for name in ("examples", "eval_examples") for f in os.listdir(os.path.join(two, name))
    )
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["6", "8"]
    for name in ("train.csv", "eval.csv", "insertions.csv"):
        a, b = (pd.read_csv(os.path.join(w, name)).drop(columns=["steps_per_sec"], errors="ignore") for w in (one, two))
        assert len(a) > 0, name
        _assert_frames_close(a, b, name)
    for name in ("examples", "eval_examples"):
        _assert_frames_close(
            writers.read_examples(os.path.join(one, name)), writers.read_examples(os.path.join(two, name)), name
        )


def test_multi_host_flags_go_together():
    proc = run_memdyn("train", "--workdir=/tmp/unused", "--coordinator=127.0.0.1:1234", "--process_id=0")
    assert proc.returncode != 0 and "go together; missing --num_processes" in proc.stderr
    proc = run_memdyn("train", "--workdir=/tmp/unused", "--distributed", "--process_id=0")
    assert proc.returncode != 0 and "--distributed (auto-detection) excludes" in proc.stderr
    proc = run_memdyn("rows", "--workdir=/tmp/unused", "--step=0", "--distributed")
    assert proc.returncode != 0 and "--distributed is not a flag of `memdyn rows`" in proc.stderr


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_in_both(tmp_path):
    """Only process 1 (which writes no files) is signalled; both save the step JAX's preemption service agrees on
    and exit with 143. Twice: mid-run, and again right after the resume starts (before its first step). The run
    then resumes to the end, and its results equal bit for bit those of a two-process run never interrupted."""
    one, two = str(tmp_path / "one" / "run"), str(tmp_path / "two" / "run")
    num_steps = 200  # the notice takes a second or so to be agreed on: many steps at this size
    flags = [*TRAIN_FLAGS, f"--config.num_steps={num_steps}", "--config.checkpoint.every=1000", "--config.log_every=1"]
    train = [sys.executable, "-m", "memdyn", "train", *flags]
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"
    )

    def signalled_run(attempt: int, ready) -> int:
        """Two processes; SIGTERM to process 1 once ``ready(log of process 0)``; returns the saved step."""
        port = _free_port()
        paths = [tmp_path / f"attempt{attempt}-proc{i}.log" for i in range(2)]
        logs = [open(path, "w") for path in paths]
        procs = [
            subprocess.Popen(
                [
                    *train,
                    f"--workdir={two}",
                    f"--coordinator=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                cwd=REPO,
                env=env,
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and not ready(paths[0].read_text()):
                assert all(p.poll() is None for p in procs), "a process ended before it was signalled"
                time.sleep(0.05)
            procs[1].send_signal(signal.SIGTERM)
            returncodes = [p.wait(timeout=90) for p in procs]
        finally:
            for p in procs:
                p.kill() if p.poll() is None else None
            for log in logs:
                log.close()
        outputs = [path.read_text() for path in paths]
        assert returncodes == [143, 143], "\n".join(o[-2000:] for o in outputs)
        saved = [int(re.search(r"saved checkpoint (\d+)", o).group(1)) for o in outputs]
        assert saved[0] == saved[1], saved
        return saved[0]

    train_csv = os.path.join(two, "train.csv")
    first = signalled_run(0, lambda log: os.path.isfile(train_csv) and len(open(train_csv).readlines()) > 4)
    assert 4 <= first < num_steps
    assert os.listdir(os.path.join(two, "checkpoints")) == [str(first)]
    # signalled while the resumed run compiles: saved at its first step
    second = signalled_run(1, lambda log: f"from checkpoint {first}" in log)
    assert first < second <= first + 5, (first, second)
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == sorted([str(first), str(second)])

    # the resumed run, beside a two-process run never interrupted (over 200 steps a one-process run drifts away
    # from two processes' cross-process sums by more than rounding: that comparison is the 8-step test above)
    commands = []
    for workdir in (two, one):
        port = _free_port()
        commands += [
            (
                [
                    *train,
                    f"--workdir={workdir}",
                    f"--coordinator=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                2,
            )
            for i in range(2)
        ]
    _run_processes(tmp_path, commands, timeout=300.0)
    for name in ("train.csv", "eval.csv", "insertions.csv"):
        a, b = (pd.read_csv(os.path.join(w, name)).drop(columns=["steps_per_sec"], errors="ignore") for w in (one, two))
        assert len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(
        writers.read_examples(os.path.join(one, "examples")),
        writers.read_examples(os.path.join(two, "examples")),
        check_exact=True,
    )
