"""`launch/predict.py` end to end at toy scale: a sweep of sizes, every kept checkpoint scored, the analysis."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO


@pytest.mark.slow
def test_launcher_trains_scores_every_kept_checkpoint_and_analyzes(tmp_path):
    from memdyn.launch.predict import kept_steps

    assert kept_steps(48, 720, (90, 180, 360, 540, 720)) == (6, 12, 24, 36, 48)  # the same fractions
    out = tmp_path / "predict"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "predict.py"),
            f"--out={out}",
            "--sizes=nano,micro",
            "--seeds=0",
            "--num_steps=16",
            "--parallel=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for size in ("nano", "micro"):
        extracted = sorted(os.listdir(out / f"model.size={size},seed=0" / "extract"))
        assert [f for f in extracted if f.endswith(".csv")] == [f"train-{s}.csv" for s in (12, 16, 2, 4, 8)]
    pairs = pd.read_csv(out / "predict_pairs.csv")
    assert len(pairs) == 4 + 5  # the target's 4 earlier checkpoints and the smaller model's 5
    assert (out / "predict_tables.md").stat().st_size > 0 and (out / "predict.png").stat().st_size > 0
