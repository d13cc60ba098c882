"""Checkpoints: bitwise resume, resharding restore, SIGKILL mid-save, SIGTERM and Ctrl-C, forks and special-set
insertion."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_memdyn, tiny_config
from memdyn.data import build, run_data
from memdyn.train import checkpoint, insertion, job, loop, writers
from memdyn.train import steps as core

VOLATILE = ["steps_per_sec", "run"]  # wall-clock and directory name; everything else must match bitwise


def _frames(workdir):
    out = {}
    for name in ("train.csv", "eval.csv", "insertions.csv", "pos.csv"):
        path = os.path.join(workdir, name)
        out[name] = pd.read_csv(path).drop(columns=VOLATILE, errors="ignore")
    out["examples"] = writers.read_examples(os.path.join(workdir, "examples"))
    out["eval_examples"] = writers.read_examples(os.path.join(workdir, "eval_examples"))
    return out


def _final_params(workdir, config):
    run = core.build_run(config, build.prepare(config, workdir))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    with run.context():
        restored = ckpt.restore(max(ckpt.steps()), run.abstract_params, run.abstract_opt_state)
    ckpt.close()
    return jax.device_get(restored.params), jax.device_get(restored.opt_state), restored


def _assert_same_run(a, b, config):
    fa, fb = _frames(a), _frames(b)
    for name in fa:
        pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True, obj=name)
    pa, oa, _ = _final_params(a, config)
    pb, ob, _ = _final_params(b, config)
    for x, y in zip(jax.tree.leaves((pa, oa)), jax.tree.leaves((pb, ob))):
        np.testing.assert_array_equal(x, y)


CONFIG = dict(num_steps=12, **{"insert.at_step": 5, "model.causal": False})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted masked-LM run with an insertion, evaluations and checkpoints every 4 steps."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    job.train(tiny_config(**CONFIG), workdir)
    return workdir


@pytest.mark.slow
def test_interrupted_run_resumes_bitwise(reference, tmp_path, monkeypatch):
    workdir = str(tmp_path / "interrupted")
    original = loop.Trainer._train_step

    def crash_at_step_10(self, params, opt_state, step, counters):
        if step == 10:
            raise KeyboardInterrupt("simulated crash")
        return original(self, params, opt_state, step, counters)

    monkeypatch.setattr(loop.Trainer, "_train_step", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        job.train(tiny_config(**CONFIG), workdir)
    assert len(pd.read_csv(os.path.join(workdir, "train.csv"))) > 8  # rows after checkpoint 8 exist ...
    monkeypatch.setattr(loop.Trainer, "_train_step", original)
    job.train(tiny_config(**CONFIG), workdir)  # ... and are rewritten by the resume
    _assert_same_run(reference, workdir, tiny_config(**CONFIG))


@pytest.mark.slow
def test_complete_run_is_not_retrained(reference):
    before = open(os.path.join(reference, "train.csv")).read()
    assert job.train(tiny_config(**CONFIG), reference)["complete"]
    assert open(os.path.join(reference, "train.csv")).read() == before


@pytest.mark.slow
def test_fork_without_insertion_continues_the_parent_exactly(tmp_path):
    parent, fork = str(tmp_path / "parent"), str(tmp_path / "fork")
    config = tiny_config(num_steps=12, **{"checkpoint.keep_steps": (5,)})  # save and keep the fork point
    job.train(config, parent)
    assert sorted(int(n) for n in os.listdir(os.path.join(parent, "checkpoints")) if n.isdigit()) == [5, 8, 12]
    job.train(tiny_config(num_steps=12, init_from=f"{parent}@5"), fork)
    a = pd.read_csv(os.path.join(parent, "train.csv")).drop(columns=VOLATILE)
    b = pd.read_csv(os.path.join(fork, "train.csv")).drop(columns=VOLATILE)
    assert b["step"].tolist() == list(range(5, 12))
    pd.testing.assert_frame_equal(a[a.step >= 5].reset_index(drop=True), b, check_exact=True)


def test_insertion_trains_exactly_the_special_rows(reference):
    config = tiny_config(**CONFIG)
    inserted = pd.read_csv(os.path.join(reference, "insertions.csv"))
    data = run_data.open_run_data(reference, core.build_run(config, build.prepare(config, reference)).config)
    special = data.sets["special"]
    assert len(inserted) == -(-special.num_examples // config.batch_size)  # one update per batch of the set
    assert insertion.insert_batch_size(33, 32, 1) == 17 and insertion.insert_batch_size(33, 32, 4) == 20
    assert insertion.insert_batch_size(20, 32, 8) == 24 and insertion.insert_batch_size(64, 32, 1) == 32
    assert (inserted["step"] == 5).all() and inserted["update"].tolist() == list(range(5, 5 + len(inserted)))
    frame = pd.read_csv(os.path.join(reference, "train.csv"))
    assert frame.loc[frame.step == 5, "update"].item() == 5 + len(inserted)  # normal step 5 follows insertion
    # `memdyn rows` reports the inserted rows at step 5, then the normal batch
    proc = run_memdyn("rows", f"--workdir={reference}", "--step=5")
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    inserted_ids = [int(i) for kind, i in lines if kind == "insert:special:0"]
    assert inserted_ids == special.example_ids.tolist()
    assert len([1 for kind, _ in lines if kind == "train"]) == config.batch_size
    # the evaluation right after the insertion is recorded at step 5, with the inserted updates counted
    evals = pd.read_csv(os.path.join(reference, "eval.csv"))
    at_5 = evals[(evals.set == "special") & (evals.step == 5)]
    assert at_5["at_insertion"].tolist() == ["before", "after"]
    assert at_5["inserted_updates"].tolist() == [0, len(inserted)]
    assert sorted(evals.loc[evals.set == "special", "step"]) == [0, 5, 5, 7, 9, 11, 12]


@pytest.mark.slow
def test_insertion_loss_is_that_of_the_special_rows_at_that_point(tmp_path):
    """The first inserted update's loss equals a forward pass over the special set's first batch with the
    parameters of checkpoint 4 trained one more step: it trained those rows, at that point."""
    workdir = str(tmp_path)
    config = tiny_config(num_steps=6, **{"insert.at_step": 4})
    job.train(config, workdir)
    run = core.build_run(config, build.prepare(config, workdir))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    with run.context():
        restored = ckpt.restore(4, run.abstract_params, run.abstract_opt_state)
        forward = core.make_eval_step(run)
        special = run.data.sets["special"]
        rows = insertion.insert_batch_size(special.num_examples, config.batch_size, shards=1)
        read = special.rows(np.arange(min(rows, special.num_examples)))  # the store itself, not the feeder
        batch = {
            "tokens_BxL": read["tokens"],
            "example_ids_B": read["example_ids"].astype(np.int32),
            "doc_ids_B": read["doc_ids"].astype(np.int32),
        }
        m = forward(restored.params, jax.device_put(batch, run.batch_sharding), np.int32(4))
    ckpt.close()
    inserted = pd.read_csv(os.path.join(workdir, "insertions.csv"))
    assert float(m["loss"]) == pytest.approx(inserted["loss"].iloc[0], rel=1e-6)


def test_repeated_and_spaced_schedules():
    c = tiny_config().insert
    c.at_step, c.every, c.times = 10, 5, 3
    assert insertion.insertion_steps(c, 100) == [10, 15, 20]
    assert insertion.insertion_steps(c, 16) == [10, 15]
    c.every, c.times = 0, 2
    with pytest.raises(ValueError, match="config.insert.times=2 needs config.insert.every"):
        insertion.insertion_steps(c, 100)


@pytest.mark.slow
def test_repeated_spaced_insertions_in_a_run(tmp_path):
    config = tiny_config(
        num_steps=9, **{"insert.at_step": 2, "insert.repeats": 2, "insert.every": 3, "insert.times": 2}
    )
    job.train(config, str(tmp_path))
    inserted = pd.read_csv(os.path.join(tmp_path, "insertions.csv"))
    batches = inserted["batch"].max() + 1
    assert inserted.groupby("step").size().to_dict() == {2: 2 * batches, 5: 2 * batches}
    assert inserted["repeat"].tolist() == ([0] * batches + [1] * batches) * 2
    frame = pd.read_csv(os.path.join(tmp_path, "train.csv"))
    assert frame["inserted_updates"].tolist() == [0, 0] + [2 * batches] * 3 + [4 * batches] * 4


def test_incompatible_checkpoint_is_refused(reference, tmp_path):
    with pytest.raises(ValueError, match=r"model.num_layers: 2 != 3"):
        job.train(tiny_config(**CONFIG, **{"model.num_layers": 3}), reference)
    with pytest.raises(ValueError, match=r"init_from.*model.d_model: 32 != 64"):
        job.train(tiny_config(num_steps=12, init_from=f"{reference}@4", **{"model.d_model": 64}), str(tmp_path))


def test_a_run_stored_before_model_cpu_kernels_resumes(reference, tmp_path):
    """A config.json written before config.model.cpu_kernels existed loads with the field's default ("auto": the
    kernels on the CPU, as that run had them) and resumes: two more steps from its last checkpoint."""
    import shutil

    from memdyn.rundir import runs

    workdir = str(tmp_path / "old")
    shutil.copytree(reference, workdir)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        stored = json.load(f)
    del stored["model"]["cpu_kernels"]
    with open(path, "w") as f:
        json.dump(stored, f)
    assert runs.load_config(workdir).model.cpu_kernels == "auto"
    assert job.train(tiny_config(**dict(CONFIG, num_steps=14)), workdir)["step"] == 13
    assert pd.read_csv(os.path.join(workdir, "train.csv"))["step"].tolist()[-2:] == [12, 13]


@pytest.mark.slow
def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    workdir = str(tmp_path)
    config = tiny_config(num_steps=8)
    job.train(config, workdir)
    latest = os.path.join(workdir, "checkpoints", "8")
    for root, _, files in os.walk(os.path.join(latest, "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    run = core.build_run(config, build.prepare(config, workdir))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    with run.context(), caplog.at_level("WARNING"):
        restored = ckpt.restore_latest(run.abstract_params, run.abstract_opt_state)
    ckpt.close()
    assert restored.step == 4
    assert any(latest in r.getMessage() for r in caplog.records)


def test_a_checkpoint_that_does_not_restore_is_named_in_one_line(caplog):
    """TensorStore's errors carry their whole spec over many lines: the warning is one line naming the step
    directory, the reason, and the error's first line at most."""
    spec = '{"driver": "zarr3", "kvstore": {"driver": "file", "path": "/w/checkpoints/8/state/d/"}}'
    error = ValueError(
        'DATA_LOSS: Error reading "params.embed" from "/w/checkpoints/8/state": Error decoding chunk '
        "[source locations='tensorstore/driver/zarr3/driver.cc:548']\n\ntensorstore_spec=" + spec * 20
    )

    def restore(step, *_):
        if step == 8:
            raise error
        return checkpoint.Restored(step, None, None, {})

    ckpt = checkpoint.Checkpointer.__new__(checkpoint.Checkpointer)  # no manager: steps and restore stand in
    ckpt.directory, ckpt.steps, ckpt.restore = "/w/checkpoints", lambda: [4, 8], restore
    with caplog.at_level("WARNING"):
        assert ckpt.restore_latest(None, None).step == 4
    (message,) = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert "\n" not in message and "tensorstore_spec" not in message and len(message) < 350
    assert message.startswith(
        "skipping checkpoint /w/checkpoints/8: it could not be restored, its files are corrupt or incomplete "
        '(ValueError: DATA_LOSS: Error reading "params.embed"'
    )


_RESHARD = r"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import tiny_config
from memdyn.train import checkpoint
from memdyn.train import steps as core
from memdyn.train import job
from memdyn.train import loop
from memdyn.data import build, run_data
workdir, mesh, mode = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3]
config = tiny_config(num_steps=8, **{"model.size": "tiny", "model.num_layers": 1})
config.sharding.mesh = mesh
if mode == "train":
    job.train(config, workdir)
run = core.build_run(config, build.prepare(config, workdir))
ckpt = checkpoint.Checkpointer(workdir + "/checkpoints", read_only=True)
with run.context():
    r = ckpt.restore(8, run.abstract_params, run.abstract_opt_state)
leaf = r.params["block_00"]["mlp"]["in_kernel"]
np.save(workdir + f"/params_{mode}_{len(jax.devices())}.npy", np.asarray(jax.device_get(leaf)))
print("RESULT" + json.dumps({"spec": str(leaf.sharding.spec), "devices": len(leaf.sharding.device_set)}))
"""


@pytest.mark.slow
def test_restore_onto_a_different_mesh_reshards(tmp_path):
    workdir = str(tmp_path)
    results = {}
    for devices, mesh, mode in ((8, [2, 2, 2], "train"), (4, [1, 1, 4], "restore"), (1, [1, 1, 1], "restore")):
        proc = subprocess.run(
            [sys.executable, "-c", _RESHARD, workdir, json.dumps(mesh), mode],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert results[8] == {"spec": "P('fsdp', 'tensor')", "devices": 8}
    assert results[4] == {"spec": "P('fsdp', 'tensor')", "devices": 4}
    assert results[1]["devices"] == 1
    saved = np.load(os.path.join(workdir, "params_train_8.npy"))
    for devices in (4, 1):
        np.testing.assert_array_equal(np.load(os.path.join(workdir, f"params_restore_{devices}.npy")), saved)


def _spawn_train(workdir, *flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memdyn",
            "train",
            f"--workdir={workdir}",
            "--config.model.size=nano",
            "--config.batch_size=8",
            "--config.data.seq_len=32",
            "--config.data.synthetic.num_train_docs=40",
            "--config.data.synthetic.vocab_size=256",
            "--config.data.synthetic.num_validation_docs=8",
            "--config.data.special_docs=3",
            "--config.optimizer.warmup_steps=2",
            "--config.eval.every=4",
            *flags,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - start < timeout
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkill_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    flags = ["--config.num_steps=40", "--config.checkpoint.every=1", "--config.checkpoint.keep=3"]
    ckpt_dir = os.path.join(killed, "checkpoints")

    def saving_after_a_complete_one():
        if not os.path.isdir(ckpt_dir):
            return False
        names = os.listdir(ckpt_dir)
        return any(n.isdigit() and int(n) >= 3 for n in names) and any("tmp" in n for n in names)

    proc = _spawn_train(killed, *flags)
    _wait_for(saving_after_a_complete_one, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any("tmp" in n for n in os.listdir(ckpt_dir)), "the kill did not land mid-save"
    resumed = _spawn_train(killed, *flags)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming" in err and "from checkpoint" in err
    reference = _spawn_train(clean, *flags)
    assert reference.wait(timeout=600) == 0
    for name in ("train.csv", "eval.csv", "pos.csv"):
        a = pd.read_csv(os.path.join(killed, name)).drop(columns=VOLATILE, errors="ignore")
        b = pd.read_csv(os.path.join(clean, name)).drop(columns=VOLATILE, errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    workdir = str(tmp_path)
    proc = _spawn_train(workdir, "--config.num_steps=100000", "--config.checkpoint.every=0")
    _wait_for(
        lambda: (
            os.path.exists(os.path.join(workdir, "train.csv"))
            and writers.count_csv_rows(os.path.join(workdir, "train.csv")) >= 3
        ),
        proc,
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "SIGTERM: saved checkpoint" in err  # 128 + SIGTERM, as a scheduler expects
    assert "Traceback" not in err
    steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
    assert len(steps) == 1 and steps[0] >= 3
    assert writers.count_csv_rows(os.path.join(workdir, "train.csv")) == steps[0]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_stops_with_130_and_the_run_resumes_bitwise(tmp_path):
    interrupted, clean = str(tmp_path / "interrupted"), str(tmp_path / "clean")
    flags = ["--config.num_steps=30", "--config.checkpoint.every=20"]
    train_csv = os.path.join(interrupted, "train.csv")
    proc = _spawn_train(interrupted, *flags)
    _wait_for(lambda: os.path.exists(train_csv) and writers.count_csv_rows(train_csv) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]  # 128 + SIGINT
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    steps = [int(n) for n in os.listdir(os.path.join(interrupted, "checkpoints")) if n.isdigit()]
    assert len(steps) == 1 and 3 <= steps[0] < 20, steps  # between checkpoint.every's saves: Ctrl-C's own
    said = [line for line in err.splitlines() if "saved checkpoint" in line]
    assert said == [
        f"memdyn train: SIGINT (Ctrl-C): saved checkpoint {steps[0]} in {interrupted!r}; run the same command "
        "again to resume from it"
    ]
    assert writers.count_csv_rows(train_csv) == steps[0]
    resumed = _spawn_train(interrupted, *flags)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and f"from checkpoint {steps[0]}" in err, err[-3000:]
    reference = _spawn_train(clean, *flags)
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    for name in ("train.csv", "eval.csv", "pos.csv"):
        a = pd.read_csv(os.path.join(interrupted, name)).drop(columns=VOLATILE, errors="ignore")
        b = pd.read_csv(os.path.join(clean, name)).drop(columns=VOLATILE, errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


def test_stop_signals_save_then_a_second_ctrl_c_stops_at_once():
    """The loop's handler: the first SIGINT or SIGTERM asks for a save and a stop (SIGTERM's 143 wins over
    SIGINT's 130, as a scheduler requeues on it); a SIGINT once a stop is asked for stops at once."""
    assert loop.Preempted("saved", signal.SIGINT).status == 130 and loop.Preempted("saved").status == 143
    trainer = loop.Trainer.__new__(loop.Trainer)  # the handler needs no run
    for first, then, asked in [
        (signal.SIGINT, signal.SIGTERM, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGTERM, signal.SIGTERM),
    ]:
        trainer._stop_signal = None
        trainer._on_signal(first, None)
        assert trainer._stop_signal == first
        trainer._on_signal(then, None)
        assert trainer._stop_signal == asked
    for first in (signal.SIGINT, signal.SIGTERM):
        trainer._stop_signal = None
        trainer._on_signal(first, None)
        with pytest.raises(KeyboardInterrupt, match="without saving"):
            trainer._on_signal(signal.SIGINT, None)


def test_analyze_forgetting_command(reference, tmp_path):
    proc = run_memdyn("analyze", "forgetting", f"--workdir={reference}", f"--out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(os.path.join(tmp_path, "forgetting_summary.csv"))
    assert summary["insert_step"].tolist() == [5]
    assert "retained" not in summary.columns  # no sham control among the runs
    curves = pd.read_csv(os.path.join(tmp_path, "forgetting_curves.csv"))
    assert curves["step"].min() == 5 and "control_exact_match" not in curves.columns
    evals = pd.read_csv(os.path.join(reference, "eval.csv"))
    before = evals[(evals.set == "special") & (evals.at_insertion == "before")]
    assert summary["m_before"].item() == before["exact_match"].item()
    assert os.path.exists(os.path.join(tmp_path, "forgetting.png"))
