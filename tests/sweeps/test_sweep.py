"""Local sweeps (spec parsing, run/skip/resume, validation before any run) and the CSV exports."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO
from memdyn import sweeps
from memdyn.rundir import export, runs

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
    combos = sweeps.parse_sweep(["model.size=nano,tiny", "seed=0,1", "sharding.mesh=(2,1,1),(-1,1,1)"])
    assert len(combos) == 8
    assert combos[0] == {"model.size": "nano", "seed": 0, "sharding.mesh": (2, 1, 1)}
    assert combos[1] == {"model.size": "nano", "seed": 0, "sharding.mesh": (-1, 1, 1)}
    assert combos[-1] == {"model.size": "tiny", "seed": 1, "sharding.mesh": (-1, 1, 1)}
    assert sweeps.parse_sweep([]) == [{}]


def test_parse_sweep_values():
    [a, b] = sweeps.parse_sweep(["x=1e-3,true", "y='a,b'", "z=False", "w=None"])
    assert a == {"x": 0.001, "y": "a,b", "z": False, "w": None}
    assert b["x"] is True
    assert [c["v"] for c in sweeps.parse_sweep(["v=3,2.5,cosine,[1,2]"])] == [3, 2.5, "cosine", [1, 2]]


@pytest.mark.parametrize("spec", ["seed", "=1,2", "seed=", "seed=1,,2", "a..b=1", "mesh=(1,2", "x=1)"])
def test_malformed_spec_is_named(spec):
    with pytest.raises(ValueError, match=re.escape(f"malformed sweep spec {spec!r}")):
        sweeps.parse_sweep(["seed=0", spec])


def test_run_names_are_readable_and_safe():
    assert sweeps.run_name({"model.size": "tiny", "seed": 1}) == "model.size=tiny,seed=1"
    assert (
        sweeps.run_name({"sharding.mesh": (-1, 1, 1), "optimizer.lr": 1e-3})
        == "sharding.mesh=-1x1x1,optimizer.lr=0.001"
    )
    assert sweeps.run_name({"data.store": "/a b/c"}) == "data.store=_a_b_c"
    assert sweeps.run_name({}) == "default"
    long = sweeps.run_name({"x": "a" * 300})
    assert len(long) <= 200 and long != sweeps.run_name({"x": "a" * 301})


def test_invalid_combination_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"config\.model\.nope"):
        sweeps.run_sweep(BASE, None, str(tmp_path), ["seed=0,1", "model.nope=1"], TINY)
    with pytest.raises(ValueError, match=r"model.size=bogus.*config\.model\.size='bogus'"):
        sweeps.run_sweep(BASE, None, str(tmp_path), ["model.size=nano,bogus"], TINY)
    with pytest.raises(ValueError, match=r"config\.batch_size='x'"):
        sweeps.run_sweep(BASE, None, str(tmp_path), ["seed=0"], {**TINY, "batch_size": "x"})
    assert os.listdir(tmp_path) == []  # nothing trained, not even the valid first combination


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """seed=0 trained for 2 steps in a subprocess (parallel mode), then the sweep seed=0,1 to 4 steps in-process."""
    sweep_dir = str(tmp_path_factory.mktemp("sweep"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        first = sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 2}, parallel=2)
    second = sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0,1"], TINY)
    return sweep_dir, first, second


@pytest.mark.slow
def test_sweep_trains_every_combination_and_resumes(swept):
    sweep_dir, first, second = swept
    assert [(r.name, r.status) for r in first] == [("seed=0", "complete")]
    assert [(r.name, r.status, r.overrides) for r in second] == [
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


@pytest.mark.slow
def test_second_sweep_skips_complete_runs(swept):
    sweep_dir = swept[0]
    paths = [os.path.join(sweep_dir, f"seed={s}", "train.csv") for s in (0, 1)]
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    runs = sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0,1"], TINY)
    assert [r.status for r in runs] == ["skipped", "skipped"]
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


@pytest.mark.slow
def test_parallel_sweep_says_when_each_run_starts_and_ends_and_where_its_log_is(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    sweep_dir = str(tmp_path / "sweep")
    with caplog.at_level(logging.INFO):
        sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 1}, parallel=2)
    log_path = os.path.join(sweep_dir, "logs", "seed=0.log")
    messages = [r.getMessage() for r in caplog.records]
    assert f"run 1/1: seed=0 started (its log: {log_path})" in messages
    assert f"run seed=0: complete (1 of 1 finished, 0 running; its log: {log_path})" in messages
    assert os.path.getsize(log_path) > 0


def _train_step_entries(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.startswith("jit_train_step"))


@pytest.mark.slow
def test_runs_of_a_sweep_share_one_compilation_cache(tmp_path, monkeypatch):
    """The first run compiles its train step into <sweep>/compile_cache; later runs of the same shape, in
    processes of their own, find it there (no new entry) and give the same numbers as a run that compiled its
    own step; an in-process sweep uses its cache too and leaves this process's JAX config as it was."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    sweep_dir = str(tmp_path / "sweep")
    sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0"], {**TINY, "num_steps": 2}, parallel=2)
    cache = os.path.join(sweep_dir, sweeps.COMPILE_CACHE)
    first = _train_step_entries(cache)
    assert len(first) == 1
    sweeps.run_sweep(BASE, None, sweep_dir, ["seed=1,2"], {**TINY, "num_steps": 2}, parallel=2)
    assert _train_step_entries(cache) == first
    in_process = str(tmp_path / "in_process")
    sweeps.run_sweep(BASE, None, in_process, ["seed=1"], {**TINY, "num_steps": 2})
    assert len(_train_step_entries(os.path.join(in_process, sweeps.COMPILE_CACHE))) == 1
    import jax

    assert jax.config.jax_compilation_cache_dir is None  # restored after the sweep
    for name in ("train.csv", "eval.csv"):
        cached = pd.read_csv(os.path.join(sweep_dir, "seed=1", name)).drop(columns="steps_per_sec", errors="ignore")
        plain = pd.read_csv(os.path.join(in_process, "seed=1", name)).drop(columns="steps_per_sec", errors="ignore")
        pd.testing.assert_frame_equal(cached.drop(columns="run"), plain.drop(columns="run"))


def test_device_groups_split_the_hosts_gpus_between_parallel_runs():
    gpus = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert sweeps.device_groups(gpus, 4, environ={}) == [
        {"CUDA_VISIBLE_DEVICES": g} for g in ("0,1", "2,3", "4,5", "6,7")
    ]
    assert sweeps.device_groups(gpus[:3], 2, environ={}) == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]  # GPU 2 idles
    # more runs than GPUs: they share, each preallocating its share of the memory (JAX's default is 75% each)
    shared = sweeps.device_groups(["0", "1"], 4, environ={})
    assert [g["CUDA_VISIBLE_DEVICES"] for g in shared] == ["0", "1", "0", "1"]
    assert {g["XLA_PYTHON_CLIENT_MEM_FRACTION"] for g in shared} == {"0.450"}
    user = sweeps.device_groups(["0"], 2, environ={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    assert user == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2  # the user's own memory setting is kept
    assert sweeps.device_groups([], 3, environ={}) == [{}, {}, {}]  # CPU: nothing to split
    assert sweeps.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert sweeps.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.slow
def test_parallel_runs_get_disjoint_device_groups_and_sweep_status_reads_them(tmp_path, monkeypatch, capsys):
    """A host that shows 4 GPUs (CUDA_VISIBLE_DEVICES; the runs train on the CPU): 2 runs at a time get 2 GPUs
    each, a third reuses the group of the run that ended; `memdyn sweep status` reports every run done."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    sweep_dir = str(tmp_path / "sweep")
    sweeps.run_sweep(BASE, None, sweep_dir, ["seed=0,1,2"], {**TINY, "num_steps": 2}, parallel=2)
    recorded = {
        r["name"]: r["devices"]["CUDA_VISIBLE_DEVICES"]
        for r in json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]
    }
    assert recorded["seed=0"] == "0,1" and recorded["seed=1"] == "2,3" and recorded["seed=2"] in ("0,1", "2,3")
    status = sweeps.sweep_status(sweep_dir)
    assert [(r.name, r.status, r.step, r.num_steps) for r in status] == [(f"seed={s}", "done", 2, 2) for s in range(3)]
    import shutil

    shutil.rmtree(os.path.join(sweep_dir, "seed=2", "checkpoints"))  # as if its training had been lost
    assert sweeps.sweep_status(sweep_dir)[2].status == "failed"


@pytest.mark.slow
def test_tpu_backend_runs_each_run_on_every_worker(tmp_path, monkeypatch):
    """--dry_run lists the gcloud commands; without it they run, one after another (a stand-in gcloud on PATH
    records its arguments and trains the run here, as a worker would)."""
    from memdyn.sweeps import tpu

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    pod = tpu.Pod(name="pod-1", zone="us-central2-b", project="proj")
    sweep_dir = str(tmp_path / "sweep")
    planned = sweeps.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod, dry_run=True)
    assert not os.path.exists(sweep_dir)
    command = planned[0].command
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
    ran = sweeps.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod)
    assert [r.status for r in ran] == ["complete", "complete"]
    assert len(calls.read_text().splitlines()) == 2
    assert all(runs.is_complete(os.path.join(sweep_dir, f"seed={s}"), 2) for s in (0, 1))
    again = sweeps.run_tpu(BASE, None, sweep_dir, ["seed=0,1"], {**TINY, "num_steps": 2}, pod)
    assert [r.status for r in again] == ["skipped", "skipped"] and len(calls.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="--backend=tpu needs --zone"):
        sweeps.run_tpu(BASE, None, sweep_dir, ["seed=0"], TINY, tpu.Pod(name="pod-1", zone=None))


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
    status = {r.name: r.status for r in sweeps.sweep_status(str(tmp_path))}
    assert status == {"dead": "interrupted", "alive": "running", "elsewhere": "running", "unrecorded": "running"}


def _old_sweep_json(sweep_dir: str) -> dict:
    """sweep.json as memdyn wrote it before runs were SweepRuns (the dicts of memdyn/sweeps/sweep.py): the header,
    and each run with the keys its backend set (a parallel local run, a failed local run, a SLURM task, a TPU run)."""
    workdir = lambda name: os.path.join(sweep_dir, name)  # noqa: E731
    return {
        "config": BASE,
        "config_arg": None,
        "specs": ["seed=0,1,2,3"],
        "base_overrides": json.loads(json.dumps(TINY)),
        "backend": "slurm",
        "runs": [
            {
                "name": "seed=0",
                "workdir": workdir("seed=0"),
                "overrides": {"seed": 0},
                "status": "complete",
                "host": "this-host",
                "pid": 11,
                "devices": {"CUDA_VISIBLE_DEVICES": "0,1"},
            },
            {
                "name": "seed=1",
                "workdir": workdir("seed=1"),
                "overrides": {"seed": 1},
                "status": "failed",
                "host": "this-host",
                "pid": 12,
                "error": "exit status 1: boom (log: x.log)",
            },
            {
                "name": "seed=2",
                "workdir": workdir("seed=2"),
                "overrides": {"seed": 2},
                "index": 2,
                "status": "submitted",
                "slurm_job": "77_2",
                "log": os.path.join(sweep_dir, "logs", "slurm-77_2.log"),
            },
            {
                "name": "seed=3",
                "workdir": workdir("seed=3"),
                "overrides": {"seed": 3},
                "index": 3,
                "status": "running",
                "host": "another-host",
                "pid": 13,
                "command": ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--worker=all", "--command=x"],
            },
        ],
    }


def test_a_sweep_json_of_earlier_versions_loads_and_resumes(tmp_path, monkeypatch):
    """A sweep.json with the keys the dict-based sweep code wrote: every run loads as a SweepRun and writes back the
    same entry (the file unchanged when saved again); status and resume planning read it as before."""
    from memdyn import config as config_lib
    from memdyn.sweeps import manifest, slurm

    sweep_dir = str(tmp_path)
    old = _old_sweep_json(sweep_dir)
    path = runs.atomic_write_json(os.path.join(sweep_dir, "sweep.json"), old)
    written = open(path).read()
    loaded = sweeps.read_runs(path)
    assert [r.to_json() for r in loaded] == old["runs"]
    assert [r.name for r in loaded] == ["seed=0", "seed=1", "seed=2", "seed=3"] and loaded[2].slurm_job == "77_2"
    assert loaded[0].devices == {"CUDA_VISIBLE_DEVICES": "0,1"} and loaded[3].command[0] == "gcloud"
    header = {k: v for k, v in old.items() if k != "runs"}
    sweeps.Manifest(sweep_dir, header, []).save()
    assert open(path).read() == written
    # an unknown key (a later version's) is kept
    assert manifest.SweepRun.from_json({"name": "a", "workdir": "w", "later": 1}).to_json()["later"] == 1

    # seed=0 trained to the end, seed=2 started; the others never left a workdir
    planned = sweeps.plan_sweep(BASE, None, sweep_dir, ["seed=0,1,2,3"], TINY)
    assert [r.status for r in planned] == ["new"] * 4
    for run in (planned[0], planned[2]):  # the resolved config a run writes when it starts
        runs.write_config(config_lib.resolve(run.config, vocab_size=256), run.workdir)
    os.makedirs(os.path.join(planned[0].workdir, "checkpoints", str(TINY["num_steps"])))
    planned = sweeps.plan_sweep(BASE, None, sweep_dir, ["seed=0,1,2,3"], TINY)
    assert [(r.name, r.status) for r in planned] == [
        ("seed=0", "complete"),
        ("seed=1", "new"),
        ("seed=2", "partial"),
        ("seed=3", "new"),
    ]

    # the scheduler still holds seed=2's task
    monkeypatch.setattr(slurm, "queued", lambda ids: {"77_2": "pending"} if "77" in ids else {})
    monkeypatch.setattr(slurm, "queued_by_name", lambda name: {})
    monkeypatch.setattr(slurm, "check_resources", lambda resources, sweep_dir: None)
    monkeypatch.setattr(slurm, "check_script", lambda path: None)
    status = sweeps.sweep_status(sweep_dir)
    assert [(r.name, r.status, r.job) for r in status] == [
        ("seed=0", "done", None),
        ("seed=1", "failed", None),
        ("seed=2", "pending", "77_2"),
        ("seed=3", "running", None),
    ]
    assert status[0].step == status[0].num_steps == TINY["num_steps"] and status[1].log.startswith("exit status 1")
    resources = slurm.Resources(gpus_per_node=0)
    out = sweeps.submit_slurm(BASE, None, sweep_dir, ["seed=0,1,2,3"], TINY, resources, dry_run=True)
    assert [(r.name, r.status, r.slurm_job) for r in out.runs] == [
        ("seed=0", "skipped", None),
        ("seed=1", "to submit", None),
        ("seed=2", "pending", "77_2"),
        ("seed=3", "to submit", None),
    ]
    assert out.array_id is None and "#SBATCH --array=1,3\n" in out.script
    assert open(path).read() == written  # a dry run writes nothing


def test_child_processes_import_this_memdyn():
    """The PYTHONPATH a run's process gets names the directory that holds this memdyn package."""
    import memdyn
    from memdyn.sweeps import commands

    root = commands.package_env()["PYTHONPATH"].split(os.pathsep)[0]
    assert os.path.samefile(os.path.join(root, "memdyn", "__init__.py"), memdyn.__file__)


def _spawn_sweep(sweep_dir, *flags):
    """`memdyn sweep` over seeds 0 and 1 of a tiny run long enough to be interrupted, as a process."""
    overrides = {**TINY, "num_steps": 200, "checkpoint.every": 100, "eval.every": 0}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memdyn",
            "sweep",
            f"--workdir={sweep_dir}",
            *(sweeps.format_flag(k, v) for k, v in overrides.items()),
            "--sweep=seed=0,1",
            *flags,
        ],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(proc, *workdirs, rows=3, timeout=300):
    """Until each workdir's train.csv has ``rows`` rows (the runs are in their step loops)."""
    start = time.time()
    while not all(
        os.path.exists(os.path.join(w, "train.csv")) and len(open(os.path.join(w, "train.csv")).readlines()) > rows
        for w in workdirs
    ):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - start < timeout
        time.sleep(0.01)


def _checkpoints(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.mark.slow
def test_ctrl_c_stops_an_in_process_sweep_after_its_run_saves(tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    first = os.path.join(sweep_dir, "seed=0")
    proc = _spawn_sweep(sweep_dir)
    _wait_for_rows(proc, first)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (saved,) = _checkpoints(first)
    assert 3 <= saved < 100
    assert f"memdyn sweep: SIGINT (Ctrl-C): saved checkpoint {saved} in {first!r}; run the same command" in err
    status = {r.name: r.status for r in sweeps.read_runs(os.path.join(sweep_dir, runs.SWEEP_FILE))}
    assert status == {"seed=0": "interrupted", "seed=1": "pending"}


@pytest.mark.slow
def test_ctrl_c_to_a_parallel_sweep_makes_every_running_run_save(tmp_path):
    """Its runs, in their own sessions, get no Ctrl-C from the terminal: the sweep SIGTERMs them, each saves, and
    the sweep says what each saved."""
    sweep_dir = str(tmp_path / "sweep")
    workdirs = [os.path.join(sweep_dir, f"seed={seed}") for seed in (0, 1)]
    proc = _spawn_sweep(sweep_dir, "--parallel=2")
    _wait_for_rows(proc, *workdirs)
    proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C reaches the sweep's process group only
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    for seed, workdir in enumerate(workdirs):
        (saved,) = _checkpoints(workdir)
        assert 3 <= saved < 100
        assert f"run seed={seed}: interrupted (exit status 143), saved checkpoint {saved}" in err
        with open(os.path.join(sweep_dir, "logs", f"seed={seed}.log")) as f:
            assert f"SIGTERM: saved checkpoint {saved}" in f.read()
    assert err.rstrip().splitlines()[-1] == (
        "memdyn sweep: Ctrl-C: stopped the sweep and its 2 running runs (seed=0, seed=1); run the same command "
        "again to resume them"
    )
    status = {r.name: r.status for r in sweeps.read_runs(os.path.join(sweep_dir, runs.SWEEP_FILE))}
    assert status == {"seed=0": "interrupted", "seed=1": "interrupted"}
