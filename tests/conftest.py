"""Shared helpers: tiny configs that train in seconds on one CPU core."""

import os
import subprocess
import sys

import pytest

from memdyn import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """Base config shrunk to a ~30k-parameter model on a ~100-example corpus."""
    c = config_lib.load_config_file(os.path.join(REPO, "configs", "base.py"))
    c.model.size = "nano"
    c.num_steps = 6
    c.batch_size = 8
    c.data.seq_len = 32
    c.optimizer.warmup_steps = 2
    c.data.synthetic.vocab_size = 256
    c.data.synthetic.num_train_docs = 40
    c.data.synthetic.num_validation_docs = 8
    c.data.special_docs = 3
    c.eval.every = 4
    c.checkpoint.every = 4
    c.insert.eval_every = 2
    return config_lib.apply_overrides(c, overrides)


@pytest.fixture
def make_config():
    return tiny_config


def run_python(code: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with ``devices`` simulated CPU devices (set before jax imports)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_PLATFORMS="cpu",
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_memdyn(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "memdyn", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
