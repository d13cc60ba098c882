"""The command line end to end: sweep -> export -> analyze, and usage errors."""

import os

import pandas as pd
import pytest

from conftest import REPO, run_memdyn

TINY = [
    "--config.model.size=nano",
    "--config.num_steps=4",
    "--config.batch_size=8",
    "--config.data.seq_len=32",
    "--config.data.synthetic.num_train_docs=40",
    "--config.data.synthetic.vocab_size=256",
    "--config.data.synthetic.num_validation_docs=8",
    "--config.data.special_docs=3",
    "--config.optimizer.warmup_steps=1",
    "--config.eval.every=2",
    "--config.checkpoint.every=2",
]


@pytest.mark.slow
def test_sweep_export_analyze(tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    out = os.path.join(sweep_dir, "export")  # inside the sweep, as README does: not taken for a run
    proc = run_memdyn("sweep", f"--workdir={sweep_dir}", *TINY, "--sweep=seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["complete", "seed=0", "complete", "seed=1"]
    proc = run_memdyn("export", f"--sweep={sweep_dir}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(os.path.join(out, "train.csv"))
    assert len(frame) == 8 and sorted(frame["seed"].unique()) == [0, 1]
    proc = run_memdyn("analyze", "memorization", f"--sweep={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(os.path.join(sweep_dir, "memorization_summary.csv"))
    assert len(summary) == 2 and {"T_epochs_0.5", "overfit_epoch"} <= set(summary.columns)
    assert os.path.exists(os.path.join(sweep_dir, "memorization.png"))
    # Two sweeps read together (the second: seed 2), with thresholds of one's own choosing
    other = str(tmp_path / "other")
    assert run_memdyn("sweep", f"--workdir={other}", *TINY, "--sweep=seed=2").returncode == 0
    both = str(tmp_path / "both")
    proc = run_memdyn(
        "analyze", "memorization", f"--sweep={sweep_dir}", f"--sweep={other}", f"--out={both}", "--taus=0.01,0.2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(os.path.join(both, "memorization_summary.csv"))
    assert sorted(summary["seed"]) == [0, 1, 2] and {"T_epochs_0.01", "T_epochs_0.2"} <= set(summary.columns)
    proc = run_memdyn("analyze", "memorization", f"--sweep={sweep_dir}", "--taus=0.5,high")
    assert proc.returncode == 2 and "--taus=0.5,high: expected comma-separated numbers" in proc.stderr


@pytest.mark.slow
def test_usage_errors():
    proc = run_memdyn("fly")
    assert (
        proc.returncode != 0
        and "usage: memdyn <train|eval|extract|import-hf|rows|sweep|export|analyze|vocab>" in proc.stderr
    )
    proc = run_memdyn("analyze", "nothing", "--workdir=/tmp")
    assert (
        proc.returncode != 0
        and ("needs one of ('forgetting', 'learning_rate', 'memorization', 'memsinks', 'pos', 'predict', 'unique_ids')")
        in proc.stderr
    )
    proc = run_memdyn("rows", "--step=3")
    assert proc.returncode != 0 and "needs --workdir" in proc.stderr
    # A field a config leaves unset (None) still takes a value on the command line (README's lm1b command).
    proc = run_memdyn("train", "--config=tfds_synthetic", "--config.data.vocab.size=32000")
    assert proc.returncode != 0 and "needs --workdir" in proc.stderr, proc.stderr[-2000:]


def test_help_per_command_and_version():
    from memdyn import __version__

    commands = ("train", "eval", "extract", "import-hf", "rows", "sweep", "export", "analyze", "vocab")
    for args in ((), ("--help",)):
        proc = run_memdyn(*args)
        assert proc.returncode == 0 and all(f"\n  {c} " in proc.stdout for c in commands), proc.stdout
    proc = run_memdyn("eval", "--help")
    assert proc.returncode == 0 and "--extract" in proc.stdout and "sweep" not in proc.stdout
    proc = run_memdyn("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"memdyn {__version__}"


def test_packaged_configs_by_name_and_in_the_wheel(tmp_path):
    """`--config=<name>[:arg]` finds a packaged config; the wheel ships configs/ as memdyn/configs."""
    import subprocess
    import sys
    import zipfile

    from memdyn import config as config_lib

    packaged = os.path.join(config_lib.CONFIG_DIR, "memorization.py")
    assert config_lib.config_path("memorization:small") == packaged + ":small"
    assert config_lib.config_path("forgetting") == os.path.join(config_lib.CONFIG_DIR, "forgetting.py")
    assert config_lib.config_path("configs/base.py") == "configs/base.py"  # a path stays a path
    assert config_lib.config_path("no_such_config") == "no_such_config"  # left for the flag parser to refuse
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(os.path.join(tmp_path, wheel)).namelist()
    packaged = {os.path.basename(n) for n in names if n.startswith("memdyn/configs/")}
    assert packaged == {f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")}


@pytest.mark.slow
def test_train_dry_run_prints_the_run_and_trains_nothing(tmp_path):
    import json
    import re

    from memdyn import config as config_lib
    from memdyn.model import sizes

    workdir = tmp_path / "dry"
    flags = [
        "--config.model.size=nano",
        "--config.batch_size=8",
        "--config.data.seq_len=32",
        "--config.data.synthetic.num_train_docs=40",
        "--config.data.synthetic.vocab_size=256",
        "--config.model.mlp=swiglu",
    ]
    proc = run_memdyn("train", f"--workdir={workdir}", "--dry_run", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # the data is built (a dry run checks it), so the vocabulary and the example count are known independently
    manifest = json.loads((workdir / "data" / "train" / "manifest.json").read_text())
    config = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    config = config_lib.apply_overrides(config, {"model.size": "nano", "data.seq_len": 32, "model.mlp": "swiglu"})
    params = sizes.count_params(config_lib.model_shape(config, manifest["vocab_size"]))
    assert f"{params:,} parameters" in out
    assert f"parameters {4 * params / 2**20:,.1f} MiB" in out  # float32 parameters on the one device
    steps = -(-manifest["num_examples"] // 8)
    assert f"{manifest['num_examples']:,} training examples" in out and f"{steps} steps per epoch" in out
    assert "(swiglu)" in out and "model.mlp: 'swiglu' (base: None)" in out
    assert re.search(r"activations ≈ [\d.,]+ MiB", out)
    assert not (workdir / "train.csv").exists() and not (workdir / "checkpoints").exists()
    assert not (workdir / "config.json").exists()


def test_sweep_dry_run_lists_and_validates_every_run_and_writes_nothing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    flags = ["--config.model.size=nano", "--config.num_steps=2", "--config.data.synthetic.num_train_docs=40"]
    proc = run_memdyn(
        "sweep", f"--workdir={sweep_dir}", "--sweep=seed=0,1", "--sweep=optimizer.lr=1e-3,3e-3", "--dry_run", *flags
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("new")]
    assert sorted(line[1] for line in lines) == sorted(
        f"seed={s},optimizer.lr={lr}" for s in (0, 1) for lr in ("0.001", "0.003")
    )
    assert "4 runs, all valid" in proc.stdout
    assert not sweep_dir.exists()
    proc = run_memdyn("sweep", f"--workdir={sweep_dir}", "--sweep=optimizer.lr=1e-3,-1", "--dry_run", *flags)
    assert proc.returncode == 2 and "optimizer.lr=-1" in proc.stderr and not sweep_dir.exists()


@pytest.mark.slow
def test_tensorflow_runs_on_the_cpu_without_cuda_probe_errors():
    """memdyn.tensorflow_cpu hides the GPUs from TensorFlow; the memdyn command sets TensorFlow's log level before
    anything imports it (a level the caller set is kept), which hides the CUDA probe's error on CPU-only machines.
    run_python sets TF_CPP_MIN_LOG_LEVEL=2: the first probe drops it, as a user's shell would not have it."""
    from conftest import run_python

    probe = "import tensorflow as tf; tf.constant(1); print('GPUS', tf.config.get_visible_devices('GPU'))"
    quiet = run_python(
        "import os; os.environ.pop('TF_CPP_MIN_LOG_LEVEL')\n"
        "from memdyn.cli import main; main.quiet_tensorflow(); level = os.environ['TF_CPP_MIN_LOG_LEVEL']\n"
        "import memdyn.tensorflow_cpu\n" + probe + "; print('ENV', level, os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "GPUS []" in quiet.stdout and "cuInit" not in quiet.stderr
    assert "ENV 3 3" in quiet.stdout  # set by the entry point, left alone by the import
    kept = run_python(
        "import os\nfrom memdyn.cli import main\n"
        "main.quiet_tensorflow()\nprint('ENV', os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    )
    assert kept.returncode == 0 and "ENV 2" in kept.stdout, kept.stderr[-2000:]  # the caller's level (run_python: 2)
    plain = run_python("import os; os.environ.pop('TF_CPP_MIN_LOG_LEVEL')\n" + probe)  # the control: no memdyn
    if "cuInit" not in plain.stderr:
        pytest.skip("TensorFlow prints no CUDA probe error on this machine: nothing to compare against")


# What TensorFlow (and JAX) print while they probe the machine, without a level that hides it
PROBING = ("absl::InitializeLog", "port.cc", "cudart_stub.cc", "cpu_feature_guard.cc", "cuInit", "initialize backend")


def _user_env(**extra: str) -> dict:
    """A user's shell: none of the settings the tests' helpers add (TF_CPP_MIN_LOG_LEVEL, JAX_PLATFORMS)."""
    drop = ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS", "MEMDYN_VERBOSE")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.mark.slow
def test_a_command_s_first_screen_is_memdyn_s_own(tmp_path):
    """TensorFlow logs its start-up probing (oneDNN, CUDA drivers) before it reads TF_CPP_MIN_LOG_LEVEL, and
    TensorFlow's profiler logs it again; the memdyn command drops those lines, and JAX's backend probing, so that a
    short training's stderr starts with memdyn's own lines. A level the user set is theirs (0: TensorFlow shows
    everything), and MEMDYN_VERBOSE=1 shows it all too."""
    import re
    import subprocess
    import sys

    def memdyn(*args: str, **env: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "memdyn", *args]
        return subprocess.run(command, cwd=tmp_path, env=_user_env(**env), capture_output=True, text=True, timeout=600)

    proc = memdyn("train", "--workdir=run", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if any(p in line for p in PROBING)], proc.stderr[:3000]
    # memdyn's own logs come from Python (file.py:line); TensorFlow's and XLA's from C++ (file.cc:line)
    assert re.match(r"[IWE]\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] ", lines[0]), proc.stderr[:3000]
    assert "built the synthetic data" in proc.stderr and ".cc:" not in proc.stderr, proc.stderr[:3000]
    plain = subprocess.run(  # the control: does TensorFlow print its probing on this machine at all?
        [sys.executable, "-c", "import tensorflow"], cwd=tmp_path, env=_user_env(), capture_output=True, text=True
    )
    if "absl::InitializeLog" not in plain.stderr:
        pytest.skip("TensorFlow prints no start-up lines on this machine: nothing to show on request")
    for env in ({"TF_CPP_MIN_LOG_LEVEL": "0"}, {"MEMDYN_VERBOSE": "1"}):
        shown = memdyn("train", "--workdir=dry", "--dry_run", *TINY, **env)
        assert shown.returncode == 0 and "absl::InitializeLog" in shown.stderr, (env, shown.stderr[-3000:])


def test_the_entry_point_sets_the_level_and_drops_only_the_lines_it_hides():
    """quiet_tensorflow: TF_CPP_MIN_LOG_LEVEL=3 unless the user set one, and TensorFlow's first import filtered at
    that level; nothing under MEMDYN_VERBOSE=1 or a level of 0. A launcher calls it after importing JAX, which sets
    1 where it finds none: that 1 is not the user's. The filter keeps what is not a log line below the level."""
    import subprocess
    import sys

    from conftest import run_python

    code = """
import os, sys
if JAX:
    import jax
from memdyn.cli import main
main.quiet_tensorflow()
hooked = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_QuietImport"]
print("LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), "HOOKED", len(hooked), "TF", "tensorflow" in sys.modules)
"""
    for env, jax, expected in (
        ({}, False, "LEVEL 3 HOOKED 1 TF False"),
        ({}, True, "LEVEL 3 HOOKED 1 TF False"),
        ({"TF_CPP_MIN_LOG_LEVEL": "1"}, False, "LEVEL 1 HOOKED 1 TF False"),
        ({"TF_CPP_MIN_LOG_LEVEL": "1"}, True, "LEVEL 1 HOOKED 1 TF False"),
        ({"TF_CPP_MIN_LOG_LEVEL": "0"}, False, "LEVEL 0 HOOKED 0 TF False"),
        ({"MEMDYN_VERBOSE": "1"}, False, "LEVEL None HOOKED 0 TF False"),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", f"JAX = {jax}\n" + code],
            cwd=REPO,
            env=_user_env(**env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 and expected in proc.stdout, (env, jax, proc.stdout, proc.stderr[-2000:])
    caught = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796200350.400956   29735 port.cc:153] oneDNN custom operations are on.\n"
        "W0000 00:00:1796200350.400957   29735 x.cc:1] a warning\n"
        "E0000 00:00:1796200350.400958   29735 cuda_platform.cc:52] failed call to cuInit\n"
        "a line of its own\n"
    )
    for level, kept in ((1, ["W0000", "E0000", "a"]), (2, ["E0000", "a"]), (3, ["a"])):
        proc = run_python(
            f"import os, sys\nfrom memdyn.cli import main\nprint('before', file=sys.stderr)\n"
            f"with main._stderr_without_logs_below({level}):\n    os.write(2, {caught.encode()!r})\n"
            "    print('python', file=sys.stderr)\nprint('after', file=sys.stderr)"
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [line.split()[0] for line in proc.stderr.splitlines()] == ["before", *kept, "python", "after"]


def test_a_flag_of_another_command_is_refused_by_name():
    proc = run_memdyn("eval", "--workdir=/nonexistent", "--set=validation", "--parallel=3")
    assert proc.returncode != 0 and "--parallel is not a flag of `memdyn eval`" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_memdyn("train", "--workdir=/nonexistent", "--noextract")
    assert proc.returncode != 0 and "--extract is not a flag of `memdyn train`" in proc.stderr
    # each analysis takes its own flags
    proc = run_memdyn("analyze", "learning_rate", "--sweep=/nonexistent", "--m_from=in_step")
    assert proc.returncode != 0 and "--m_from is not a flag of `memdyn analyze learning_rate`" in proc.stderr
    proc = run_memdyn("analyze", "forgetting", "--sweep=/nonexistent", "--taus=0.5")
    assert proc.returncode != 0 and "--taus is not a flag of `memdyn analyze forgetting`" in proc.stderr


@pytest.mark.slow
def test_launchers_run_as_modules_of_the_installed_package(tmp_path):
    import subprocess
    import sys

    for study in ("forgetting", "memsinks"):
        proc = subprocess.run(
            [sys.executable, "-m", f"memdyn.launch.{study}", "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(f"usage: {study}.py") and "--out" in proc.stdout


@pytest.mark.slow
def test_training_logs_every_evaluation_as_it_is_recorded(tmp_path):
    import re

    workdir = tmp_path / "run"
    proc = run_memdyn(
        "train",
        f"--workdir={workdir}",
        "--config.model.size=nano",
        "--config.num_steps=4",
        "--config.batch_size=8",
        "--config.data.seq_len=32",
        "--config.data.synthetic.num_train_docs=40",
        "--config.data.synthetic.vocab_size=256",
        "--config.optimizer.warmup_steps=1",
        "--config.eval.every=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = re.findall(r"step (\d+): eval (\S+)  M\(f\) ([\d.]+)  loss ([\d.]+)", proc.stderr)
    evals = pd.read_csv(workdir / "eval.csv")
    assert len(logged) == len(evals) > 0
    for (step, name, em, loss), row in zip(logged, evals.itertuples()):
        assert (int(step), name) == (row.step, row.set)
        assert abs(float(em) - row.exact_match) < 1e-4 and abs(float(loss) - row.loss) < 1e-4


@pytest.mark.slow
def test_sweep_backend_flags_are_checked_before_anything_runs(tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    base = ["sweep", "--config=base", f"--workdir={sweep_dir}", "--sweep=seed=0,1"]
    for flags, message in [
        (["--gpus_per_node=2"], "--gpus_per_node is a flag of --backend=slurm, not --backend=local"),
        (["--backend=slurm", "--tpu=pod"], "--tpu is a flag of --backend=tpu, not --backend=slurm"),
        (["--backend=slurm", "--parallel=2"], "--parallel is for --backend=local"),
        (["--backend=tpu", "--tpu=pod"], "--backend=tpu needs --zone"),
        (["status"], "--config is not a flag of `memdyn sweep status`"),
    ]:
        proc = run_memdyn(*base, *flags)
        assert proc.returncode != 0 and message in proc.stderr, (flags, proc.stderr[-500:])
    proc = run_memdyn("sweep", "status", f"--workdir={sweep_dir}", "--gpus_per_node=1")
    assert proc.returncode != 0 and "--gpus_per_node is not a flag of `memdyn sweep status`" in proc.stderr
    proc = run_memdyn("sweep", "status", f"--workdir={sweep_dir}")
    assert proc.returncode == 2 and "holds no sweep (sweep.json is missing)" in proc.stderr
    assert not os.path.exists(sweep_dir)
    proc = run_memdyn(*base, "--backend=tpu", "--tpu=pod", "--zone=z", "--dry_run", "--config.num_steps=300")
    assert proc.returncode == 0, proc.stderr
    assert "gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all" in proc.stdout and not os.path.exists(sweep_dir)
