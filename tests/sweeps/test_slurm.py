"""`memdyn sweep --backend=slurm` on a real single-node SLURM cluster (tests/sweeps/slurm_cluster.py): a job array of
two
runs; one is preempted (SIGTERM), saves, is requeued and resumes; the other is cancelled, shows as failed, and is
the only run that submitting the sweep again resubmits. Every run's results equal an uninterrupted local run's,
bit for bit. Also: the bad input that must fail before anything is submitted."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from slurm_cluster import PARTITION, slurm_cluster  # noqa: F401 (a fixture)
from slurm_cluster import unavailable as slurm_cluster_unavailable

pytestmark = pytest.mark.slow  # a real SLURM cluster on this machine (CI installs it)

from conftest import REPO, run_memdyn
from memdyn.sweeps import slurm
from memdyn.train import writers

FLAGS = [
    "--config=base",
    "--config.model.size=nano",
    "--config.batch_size=8",
    "--config.data.seq_len=32",
    "--config.data.synthetic.vocab_size=256",
    "--config.data.synthetic.num_train_docs=40",
    "--config.data.synthetic.num_validation_docs=8",
    "--config.data.special_docs=3",
    "--config.optimizer.warmup_steps=2",
    "--config.num_steps=150",
    "--config.log_every=1",
    "--config.eval.every=50",
    "--config.checkpoint.every=1000",
]
SWEEP = ["--sweep=seed=0,1"]


def _memdyn(cluster, *args, timeout=300):
    env = dict(os.environ, **cluster.env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "memdyn", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _rows(path) -> int:
    return max(0, len(open(path).readlines()) - 1) if os.path.isfile(path) else 0


def _wait(condition, what: str, cluster, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; the queue: {_squeue(cluster)}"
        time.sleep(0.1)


def _squeue(cluster) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T %r"],
        env=dict(os.environ, **cluster.env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def _status(cluster, sweep_dir) -> dict[str, str]:
    proc = _memdyn(cluster, "sweep", "status", f"--workdir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr
    return {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()[:-1]}


def test_slurm_sweep_preempts_requeues_resubmits_and_matches_a_local_run(slurm_cluster, tmp_path):
    cluster, sweep_dir = slurm_cluster, str(tmp_path / "sweep")
    submit = [
        *FLAGS,
        *SWEEP,
        f"--workdir={sweep_dir}",
        "--backend=slurm",
        "--gpus_per_node=0",
        f"--partition={PARTITION}",
    ]
    proc = _memdyn(cluster, "sweep", *submit)
    assert proc.returncode == 0, proc.stderr
    runs = json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]
    jobs = {r["name"]: r["slurm_job"] for r in runs}
    array = jobs["seed=0"].split("_")[0]
    assert jobs == {"seed=0": f"{array}_0", "seed=1": f"{array}_1"}

    # both run; seed=0 is preempted (SIGTERM to its batch script alone, as --signal=B:TERM@<t> sends it before the
    # time limit: the script has SLURM pass it on to the processes), seed=1 is cancelled outright
    csv = {name: os.path.join(sweep_dir, name, "train.csv") for name in jobs}
    _wait(lambda: all(_rows(path) >= 5 for path in csv.values()), "both runs to train 5 steps", cluster)
    env = dict(os.environ, **cluster.env)
    subprocess.run(["scancel", "--batch", "--signal=TERM", jobs["seed=0"]], env=env, check=True)
    subprocess.run(["scancel", jobs["seed=1"]], env=env, check=True)
    _wait(
        lambda: (
            _squeue(cluster).get(jobs["seed=0"], "").startswith("PENDING") and jobs["seed=1"] not in _squeue(cluster)
        ),
        "seed=0 requeued and seed=1 gone",
        cluster,
    )
    assert _status(cluster, sweep_dir) == {"seed=0": "pending", "seed=1": "failed"}
    saved = os.listdir(os.path.join(sweep_dir, "seed=0", "checkpoints"))
    assert len(saved) == 1 and 5 <= int(saved[0]) < 150, saved  # only the preemption's checkpoint
    preempted_at = int(saved[0])
    assert pd.read_csv(csv["seed=0"])["step"].iloc[-1] == preempted_at - 1

    # submitting the sweep again leaves the queued run alone and resubmits only the failed one
    proc = _memdyn(cluster, "sweep", *submit)
    assert proc.returncode == 0, proc.stderr
    runs = {r["name"]: r for r in json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]}
    assert runs["seed=0"]["slurm_job"] == jobs["seed=0"] and runs["seed=0"]["status"] == "pending"
    second = runs["seed=1"]["slurm_job"]
    assert second.endswith("_1") and second.split("_")[0] != array
    script = open(os.path.join(sweep_dir, "slurm", "array-1.sbatch")).read()
    assert "#SBATCH --array=1\n" in script

    # the requeued task waits SLURM's requeue delay (2 minutes); start it now
    subprocess.run(["scontrol", "update", f"JobId={jobs['seed=0']}", "StartTime=now"], env=env, check=True)
    slurm.wait_for([array, second.split("_")[0]], poll_seconds=0.5, timeout=240)
    assert _status(cluster, sweep_dir) == {"seed=0": "done", "seed=1": "done"}
    log = open(runs["seed=0"]["log"]).read()
    assert "attempt 1," in log and "attempt 2," in log and f"saved checkpoint {preempted_at}" in log
    assert f"resuming {os.path.join(sweep_dir, 'seed=0')} from checkpoint {preempted_at}" in log

    # the same sweep on this host, never interrupted
    local_dir = str(tmp_path / "local")
    proc = run_memdyn("sweep", *FLAGS, *SWEEP, f"--workdir={local_dir}")
    assert proc.returncode == 0, proc.stderr
    for name in jobs:
        for csv_name in ("train.csv", "eval.csv"):
            a, b = (
                pd.read_csv(os.path.join(d, name, csv_name)).drop(columns=["steps_per_sec"], errors="ignore")
                for d in (local_dir, sweep_dir)
            )
            assert len(a) > 0
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{name}/{csv_name}")
        pd.testing.assert_frame_equal(
            writers.read_examples(os.path.join(local_dir, name, "examples")),
            writers.read_examples(os.path.join(sweep_dir, name, "examples")),
            check_exact=True,
            obj=f"{name}/examples",
        )


def test_a_submission_cut_short_before_sweep_json_is_not_submitted_twice(slurm_cluster, tmp_path):
    """sbatch returned but sweep.json was never written (the submitting process died in between), or holds an
    older submission's jobs: `sweep status` and submitting again find the queued tasks by the sweep's job name;
    submitting again submits nothing and records them."""
    cluster, sweep_dir = slurm_cluster, str(tmp_path / "sweep")
    submit = [
        *FLAGS,
        *SWEEP,
        f"--workdir={sweep_dir}",
        "--backend=slurm",
        "--gpus_per_node=0",
        f"--partition={PARTITION}",
        "--sbatch_arg=--hold",
    ]  # held: the tasks stay pending
    proc = _memdyn(cluster, "sweep", *submit)
    assert proc.returncode == 0, proc.stderr
    first = {r["name"]: r["slurm_job"] for r in json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]}
    try:
        manifest = os.path.join(sweep_dir, "sweep.json")
        stale = json.load(open(manifest))
        for run in stale["runs"]:
            run["slurm_job"] = "999999_" + run["slurm_job"].split("_")[1]  # a job the scheduler does not hold
        json.dump(stale, open(manifest, "w"))
        assert _status(cluster, sweep_dir) == {"seed=0": "pending", "seed=1": "pending"}
        os.remove(manifest)
        again = _memdyn(cluster, "sweep", *submit)
        assert again.returncode == 0, again.stderr
        assert "nothing to submit" in again.stdout, again.stdout
        assert sorted(_squeue(cluster)) == sorted(first.values())  # the first array's two tasks, no others
        recorded = {r["name"]: r["slurm_job"] for r in json.load(open(os.path.join(sweep_dir, "sweep.json")))["runs"]}
        assert recorded == first
        assert _status(cluster, sweep_dir) == {"seed=0": "pending", "seed=1": "pending"}
    finally:
        subprocess.run(["scancel", first["seed=0"].split("_")[0]], env=dict(os.environ, **cluster.env), check=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--backend=slurm needs --gpus_per_node=<G>"),
        (
            ["--gpus_per_node=0", "--partition=gpu"],
            f"--partition='gpu' is not a partition of this cluster; its partitions: {PARTITION}",
        ),
        (["--gpus_per_node=4"], f"--gpus_per_node=4: the nodes of partition '{PARTITION}' (the default) have no GPUs"),
        (["--gpus_per_node=0", "--nodes=2"], "--nodes=2: the sweep directory"),
        (["--gpus_per_node=0", "--time=soon"], "SLURM refuses the batch script"),
        (["--gpus_per_node=0"], "SLURM's #SBATCH lines take no whitespace"),  # in a directory named "my sweep"
    ],
)
def test_bad_slurm_input_fails_before_submission(slurm_cluster, tmp_path, flags, message):
    sweep_dir = str(tmp_path / ("my sweep" if "whitespace" in message else "sweep"))
    proc = _memdyn(slurm_cluster, "sweep", *FLAGS, *SWEEP, f"--workdir={sweep_dir}", "--backend=slurm", *flags)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not os.path.exists(sweep_dir)
    assert _squeue(slurm_cluster) == {}


def test_no_controller_is_said_plainly(tmp_path):
    """Without a reachable controller (an empty config), one line says so; no traceback, nothing written."""
    if slurm_cluster_unavailable():
        pytest.skip(slurm_cluster_unavailable())
    empty = tmp_path / "slurm.conf"
    empty.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=1\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memdyn",
            "sweep",
            *FLAGS,
            *SWEEP,
            f"--workdir={tmp_path / 's'}",
            "--backend=slurm",
            "--gpus_per_node=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, SLURM_CONF=str(empty), JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 2 and "the SLURM controller does not answer" in proc.stderr, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "s").exists()


def test_dry_run_prints_the_script_and_submits_nothing(slurm_cluster, tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    proc = _memdyn(
        slurm_cluster,
        "sweep",
        *FLAGS,
        *SWEEP,
        f"--workdir={sweep_dir}",
        "--backend=slurm",
        "--gpus_per_node=0",
        "--time=10:00",
        "--sbatch_arg=--comment=memdyn",
        "--dry_run",
    )
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0,1\n" in proc.stdout and "#SBATCH --time=10:00\n" in proc.stdout
    assert "#SBATCH --comment=memdyn\n" in proc.stdout and "--distributed" in proc.stdout
    assert "to submit  seed=0" in proc.stdout and "nothing submitted (--dry_run)" in proc.stdout
    assert not os.path.exists(sweep_dir) and _squeue(slurm_cluster) == {}
