"""Local sweeps (spec parsing, run/skip/resume, validation before any run) and the CSV exports."""

import json
import os
import re
import sys

import pandas as pd
import pytest

from conftest import REPO
from memdyn.rundir import export, runs
from memdyn.sweeps import sweep

BASE = os.path.join(REPO, "configs", "base.py")
TINY = {
    "model.size": "nano",
    "num_steps": 4,
    "batch_size": 8,
    "data.seq_len": 32,
    "data.synthetic.vocab_size": 256,
    "data.synthetic.num_train_docs": 40,
    "data.synthetic.num_validation_docs": 8,
    "data.special_docs": 3,
    "optimizer.warmup_steps": 1,
    "optimizer.lr": 0.002,
    "eval.every": 2,
    "checkpoint.every": 2,
    "sharding.mesh": (-1, 1, 1),
}


def test_parse_sweep_is_the_cross_product_in_order():
    combos = sweep.parse_sweep(["model.size=nano,tiny", "seed=0,1", "sharding.mesh=(2,1,1),(-1,1,1)"])
    assert len(combos) == 8
    assert combos[0] == {"model.size": "nano", "seed": 0, "sharding.mesh": (2, 1, 1)}
    assert combos[1] == {"model.size": "nano", "seed": 0, "sharding.mesh": (-1, 1, 1)}
    assert combos[-1] == {"model.size": "tiny", "seed": 1, "sharding.mesh": (-1, 1, 1)}
    assert sweep.parse_sweep([]) == [{}]


def test_parse_sweep_values():
    [a, b] = sweep.parse_sweep(["x=1e-3,true", "y='a,b'", "z=False", "w=None"])
    assert a == {"x": 0.001, "y": "a,b", "z": False, "w": None}
    assert b["x"] is True
    assert [c["v"] for c in sweep.parse_sweep(["v=3,2.5,cosine,[1,2]"])] == [3, 2.5, "cosine", [1, 2]]


@pytest.mark.parametrize("spec", ["seed", "=1,2", "seed=", "seed=1,,2", "a..b=1", "mesh=(1,2", "x=1)"])
def test_malformed_spec_is_named(spec):
    with pytest.raises(ValueError, match=re.escape(f"malformed sweep spec {spec!r}")):
        sweep.parse_sweep(["seed=0", spec])


def test_run_names_are_readable_and_safe():
    assert sweep.run_name({"model.size": "tiny", "seed": 1}) == "model.size=tiny,seed=1"
    assert (
        sweep.run_name({"sharding.mesh": (-1, 1, 1), "optimizer.lr": 1e-3}) == "sharding.mesh=-1x1x1,optimizer.lr=0.001"
    )
    assert sweep.run_name({"data.store": "/a b/c"}) == "data.store=_a_b_c"
    assert sweep.run_name({}) == "default"
    long = sweep.run_name({"x": "a" * 300})
    assert len(long) <= 200 and long != sweep.run_name({"x": "a" * 301})


def test_invalid_combination_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"config\.model\.nope"):
        sweep.run_sweep(BASE, None, str(tmp_path), ["seed=0,1", "model.nope=1"], TINY)
    with pytest.raises(ValueError, match=r"model.size=bogus.*config\.model\.size='bogus'"):
        sweep.run_sweep(BASE, None, str(tmp_path), ["model.size=nano,bogus"], TINY)
    with pytest.raises(ValueError, match=r"config\.batch_size='x'"):
        sweep.run_sweep(BASE, None, str(tmp_path), ["seed=0"], {**TINY, "batch_size": "x"})
    assert os.listdir(tmp_path) == []  # nothing trained, not even the valid first combination


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """seed=0 trained for 2 steps in a subprocess (parallel mode), then the sweep seed=0,1 to 4 steps in-process."""
    sweep_dir = str(tmp_path_factory.mktemp("sweep"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        first = sweep.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 2}, parallel=2)
    second = sweep.run_sweep(BASE, None, sweep_dir, ["seed=0,1"], TINY)
    return sweep_dir, first, second


def test_sweep_trains_every_combination_and_resumes(swept):
    sweep_dir, first, second = swept
    assert [(r["name"], r["status"]) for r in first] == [("seed=0", "complete")]
    assert [(r["name"], r["status"], r["overrides"]) for r in second] == [
        ("seed=0", "complete", {"seed": 0}),
        ("seed=1", "complete", {"seed": 1}),
    ]
    for seed in (0, 1):
        workdir = os.path.join(sweep_dir, f"seed={seed}")
        assert runs.latest_checkpoint(workdir) == 4
        train = pd.read_csv(os.path.join(workdir, "train.csv"))
        assert train["step"].tolist() == [0, 1, 2, 3] and (train["seed"] == seed).all()
        assert (train["peak_lr"] == 0.002).all()  # the overrides reached the subprocess and the resumed run
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        manifest = json.load(f)
    assert [r["status"] for r in manifest["runs"]] == ["complete", "complete"]
    assert manifest["base_overrides"]["num_steps"] == 4


def test_second_sweep_skips_complete_runs(swept):
    sweep_dir = swept[0]
    paths = [os.path.join(sweep_dir, f"seed={s}", "train.csv") for s in (0, 1)]
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    runs = sweep.run_sweep(BASE, None, sweep_dir, ["seed=0,1"], TINY)
    assert [r["status"] for r in runs] == ["skipped", "skipped"]
    assert [os.stat(p).st_mtime_ns for p in paths] == mtimes


def test_export_sweep_concatenates_runs_with_override_columns(swept, tmp_path):
    sweep_dir = swept[0]
    written = export.export_sweep(sweep_dir, str(tmp_path))
    assert set(written) == set(export.FILES)
    for name in ("train.csv", "eval.csv", "examples.csv", "eval_examples.csv"):
        frame = export.load(written[name])
        per_run = [export.read_file(os.path.join(sweep_dir, f"seed={s}"), name) for s in (0, 1)]
        assert len(frame) == sum(len(f) for f in per_run) > 0
        assert list(frame.columns[:2]) == ["run", "seed"]
        assert sorted(frame.groupby("run")["seed"].unique().apply(list).items()) == [("seed=0", [0]), ("seed=1", [1])]
    assert len(export.load(written["examples.csv"])) == 2 * 4 * 8
    assert {"size", "params", "peak_lr", "loss"} <= set(export.load(written["train.csv"]).columns)


def test_export_run_writes_tidy_csvs(swept, tmp_path):
    workdir = os.path.join(swept[0], "seed=1")
    written = export.export_run(workdir, str(tmp_path))
    assert set(written) == set(export.FILES)
    assert open(written["train.csv"]).read() == open(os.path.join(workdir, "train.csv")).read()
    examples = export.load(written["examples.csv"])
    assert list(examples.columns[:2]) == ["step", "example_id"] and len(examples) == 4 * 8
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_parallel_sweep_says_when_each_run_starts_and_ends_and_where_its_log_is(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    sweep_dir = str(tmp_path / "sweep")
    with caplog.at_level(logging.INFO):
        sweep.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 1}, parallel=2)
    log_path = os.path.join(sweep_dir, "logs", "seed=0.log")
    messages = [r.getMessage() for r in caplog.records]
    assert f"run 1/1: seed=0 started (its log: {log_path})" in messages
    assert f"run seed=0: complete (1 of 1 finished, 0 running; its log: {log_path})" in messages
    assert os.path.getsize(log_path) > 0


def _train_step_entries(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.startswith("jit_train_step"))


def test_runs_of_a_sweep_share_one_compilation_cache(tmp_path, monkeypatch):
    """The first run compiles its train step into <sweep>/compile_cache; later runs of the same shape, in
    processes of their own, find it there (no new entry) and give the same numbers as a run that compiled its
    own step; an in-process sweep uses its cache too and leaves this process's JAX config as it was."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    sweep_dir = str(tmp_path / "sweep")
    sweep.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 2}, parallel=2)
    cache = os.path.join(sweep_dir, sweep.COMPILE_CACHE)
    first = _train_step_entries(cache)
    assert len(first) == 1
    sweep.run_sweep(BASE, None, sweep_dir, ["seed=1,2"], {**TINY, "num_steps": 2}, parallel=2)
    assert _train_step_entries(cache) == first
    in_process = str(tmp_path / "in_process")
    sweep.run_sweep(BASE, None, in_process, ["seed=1"], {**TINY, "num_steps": 2})
    assert len(_train_step_entries(os.path.join(in_process, sweep.COMPILE_CACHE))) == 1
    import jax

    assert jax.config.jax_compilation_cache_dir is None  # restored after the sweep
    for name in ("train.csv", "eval.csv"):
        cached = pd.read_csv(os.path.join(sweep_dir, "seed=1", name)).drop(columns="steps_per_sec", errors="ignore")
        plain = pd.read_csv(os.path.join(in_process, "seed=1", name)).drop(columns="steps_per_sec", errors="ignore")
        pd.testing.assert_frame_equal(cached.drop(columns="run"), plain.drop(columns="run"))


def test_device_groups_split_the_hosts_gpus_between_parallel_runs():
    gpus = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert sweep.device_groups(gpus, 4, environ={}) == [
        {"CUDA_VISIBLE_DEVICES": g} for g in ("0,1", "2,3", "4,5", "6,7")
    ]
    assert sweep.device_groups(gpus[:3], 2, environ={}) == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]  # GPU 2 idles
    # more runs than GPUs: they share, each preallocating its share of the memory (JAX's default is 75% each)
    shared = sweep.device_groups(["0", "1"], 4, environ={})
    assert [g["CUDA_VISIBLE_DEVICES"] for g in shared] == ["0", "1", "0", "1"]
    assert {g["XLA_PYTHON_CLIENT_MEM_FRACTION"] for g in shared} == {"0.450"}
    user = sweep.device_groups(["0"], 2, environ={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    assert user == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2  # the user's own memory setting is kept
    assert sweep.device_groups([], 3, environ={}) == [{}, {}, {}]  # CPU: nothing to split
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_parallel_runs_get_disjoint_device_groups_and_sweep_status_reads_them(tmp_path, monkeypatch, capsys):
    """A host that shows 4 GPUs (CUDA_VISIBLE_DEVICES; the runs train on the CPU): 2 runs at a time get 2 GPUs
    each, a third reuses the group of the run that ended; `memdyn sweep status` reports every run done."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    sweep_dir = str(tmp_path / "sweep")
    sweep.run_sweep(BASE, None, sweep_dir, ["seed=0,1,2"], {**TINY, "num_steps": 2}, parallel=2)
    recorded = {
        r["name"]: r["devices"]["CUDA_VISIBLE_DEVICES"]
        for r in json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]
    }
    assert recorded["seed=0"] == "0,1" and recorded["seed=1"] == "2,3" and recorded["seed=2"] in ("0,1", "2,3")
    status = sweep.sweep_status(sweep_dir)
    assert [(r["name"], r["status"], r["step"], r["num_steps"]) for r in status] == [
        (f"seed={s}", "done", 2, 2) for s in range(3)
    ]
    import shutil

    shutil.rmtree(os.path.join(sweep_dir, "seed=2", "checkpoints"))  # as if its training had been lost
    assert sweep.sweep_status(sweep_dir)[2]["status"] == "failed"


def test_tpu_backend_runs_each_run_on_every_worker(tmp_path, monkeypatch):
    """--dry_run lists the gcloud commands; without it they run, one after another (a stand-in gcloud on PATH
    records its arguments and trains the run here, as a worker would)."""
    from memdyn.sweeps import tpu

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    pod = tpu.Pod(name="pod-1", zone="us-central2-b", project="proj")
    sweep_dir = str(tmp_path / "sweep")
    planned = sweep.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod, dry_run=True)
    assert not os.path.exists(sweep_dir)
    command = planned[0]["command"]
    assert command[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod-1",
        "--zone=us-central2-b",
        "--project=proj",
    ]
    # a packaged config goes by name: its path on the workers is their own install's
    assert command[8] == "--worker=all" and command[9].startswith(
        "--command=python3 -m memdyn train --distributed --config=base "
    )
    assert f"--workdir={os.path.join(sweep_dir, 'seed=0')}" in command[9] and "--config.seed=0" in command[9]

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"  # runs the worker command here, without --distributed (no pod to find)
    fake.write_text(
        f'#!/bin/bash\necho "$@" >> {calls}\ncmd="${{@: -1}}"; cmd="${{cmd#--command=}}"\n'
        f'cmd="${{cmd/python3/{sys.executable}}}"; eval "${{cmd/ --distributed/}}"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", REPO)
    ran = sweep.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod)
    assert [r["status"] for r in ran] == ["complete", "complete"]
    assert len(calls.read_text().splitlines()) == 2
    assert all(runs.is_complete(os.path.join(sweep_dir, f"seed={s}"), 2) for s in (0, 1))
    again = sweep.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod)
    assert [r["status"] for r in again] == ["skipped", "skipped"] and len(calls.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="--backend=tpu needs --zone"):
        sweep.run_tpu(BASE, None, sweep_dir, ["seed=0"], TINY, tpu.Pod(name="pod-1", zone=None))


def test_sweep_status_finds_runs_whose_process_is_gone(tmp_path):
    """sweep.json says running: a process of this host that ended makes the run interrupted; a live one, another
    host's or an unrecorded one keeps it running (nothing to check from here)."""
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    recorded = [
        ("dead", host, gone.pid),
        ("alive", host, os.getpid()),
        ("elsewhere", "another-host", gone.pid),
        ("unrecorded", None, None),
    ]
    runs = [
        {"name": name, "workdir": str(tmp_path / name), "status": "running", "host": h, "pid": pid}
        for name, h, pid in recorded
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": runs}))
    status = {r["name"]: r["status"] for r in sweep.sweep_status(str(tmp_path))}
    assert status == {"dead": "interrupted", "alive": "running", "elsewhere": "running", "unrecorded": "running"}
