"""The command line end to end: sweep -> export -> analyze, and usage errors."""

import os

import pandas as pd

from conftest import run_memdyn

TINY = ["--config.model.size=nano", "--config.num_steps=4", "--config.batch_size=8", "--config.data.seq_len=32",
        "--config.data.synthetic.num_train_docs=40", "--config.data.synthetic.vocab_size=256",
        "--config.data.synthetic.num_validation_docs=8", "--config.data.special_docs=3",
        "--config.optimizer.warmup_steps=1", "--config.eval.every=2", "--config.checkpoint.every=2"]


def test_sweep_export_analyze(tmp_path):
    sweep_dir, out = str(tmp_path / "sweep"), str(tmp_path / "out")
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


def test_usage_errors():
    proc = run_memdyn("fly")
    assert proc.returncode != 0 and "usage: memdyn <train|eval|rows|sweep|export|analyze|vocab>" in proc.stderr
    proc = run_memdyn("analyze", "nothing", "--workdir=/tmp")
    assert proc.returncode != 0 and "needs one of ('forgetting', 'memorization')" in proc.stderr
    proc = run_memdyn("rows", "--step=3")
    assert proc.returncode != 0 and "needs --workdir" in proc.stderr
