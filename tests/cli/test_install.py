"""A new user's install: the wheel, installed with its dependencies into a fresh virtual environment, run from a
directory outside the repository. About a minute when pip's cache holds the dependencies (as after the suite's own
install), a few more when pip downloads jax, flax, TensorFlow, ...
"""

import os
import subprocess
import sys
import venv

import pytest

from conftest import REPO


def _run(args, cwd, timeout=1800, env=None):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(wheels)],
        cwd=REPO,
    )
    (wheel,) = wheels.glob("memdyn-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what the wheel declares
    python = str(env_dir / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"  # no configs/ or memdyn/ beside it: everything comes from the install
    elsewhere.mkdir()
    memdyn = str(env_dir / "bin" / "memdyn")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}")
    location = _run([python, "-c", "import memdyn; print(memdyn.__file__)"], cwd=elsewhere, env=env).stdout
    assert location.startswith(str(env_dir)), location

    commands = _run([memdyn, "--help"], cwd=elsewhere, env=env).stdout
    assert all(f"\n  {c} " in commands for c in ("train", "eval", "sweep", "export", "analyze")), commands
    small = [
        "--config.model.size=nano",
        "--config.data.synthetic.num_train_docs=40",
        "--config.batch_size=8",
        "--config.data.seq_len=32",
    ]
    dry = _run(
        [memdyn, "train", "--config=memorization:nano", "--workdir=dry", "--dry_run", *small], cwd=elsewhere, env=env
    ).stdout
    assert "parameters" in dry and "steps per epoch" in dry and not (elsewhere / "dry" / "train.csv").exists()
    _run(
        [
            memdyn,
            "train",
            "--config=memorization:nano",
            "--workdir=run",
            "--config.num_steps=12",
            "--config.optimizer.warmup_steps=2",
            *small,
        ],
        cwd=elsewhere,
        env=env,
    )
    for name in ("train.csv", "eval.csv", "config.json", "train.png"):
        assert (elsewhere / "run" / name).exists(), name
    with open(elsewhere / "run" / "train.csv") as f:
        assert sum(1 for _ in f) == 13  # a header and one row per step
    # a launcher ships with the package
    launcher = _run([python, "-m", "memdyn.launch.memsinks", "--help"], cwd=elsewhere, env=env).stdout
    assert "--seeds" in launcher, launcher
