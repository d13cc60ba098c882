"""`memdyn eval` at a checkpoint agrees with the evaluation done during training; k-extractability CSV."""

import os

import pandas as pd
import pytest

from conftest import run_memdyn, tiny_config
from memdyn.extraction import eval_checkpoint
from memdyn.train import job


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    job.train(tiny_config(num_steps=8), workdir)
    return workdir


def test_eval_at_a_checkpoint_equals_the_in_training_evaluation(run_dir):
    aggregates = eval_checkpoint.evaluate_checkpoint(run_dir, "validation", step=4)
    during = pd.read_csv(os.path.join(run_dir, "eval.csv"))
    row = during[(during.set == "validation") & (during.step == 4)]
    assert aggregates["exact_match"] == pytest.approx(row["exact_match"].item(), abs=1e-7)
    assert aggregates["loss"] == pytest.approx(row["loss"].item(), rel=1e-6)
    per_example = pd.read_csv(os.path.join(run_dir, "evals", "validation-4.csv"))
    assert len(per_example) == row["num_examples"].item()


def test_extract_writes_biderman_style_csv(run_dir):
    aggregates = eval_checkpoint.evaluate_checkpoint(run_dir, "train", extract_k=True, prompt_len=8, num_new=8)
    frame = pd.read_csv(os.path.join(run_dir, "evals", "train-8-extract.csv"))
    assert list(frame.columns) == ["example_id", "score", "memorized", "prefix_match", "loss"]
    assert len(frame) == aggregates["extract_examples"] > 0
    # the examples shorter than prompt + continuation are counted as left out, recomputed from the store
    import numpy as np

    from memdyn.data import run_data
    from memdyn.rundir import runs

    data = run_data.open_run_data(run_dir, runs.load_config(run_dir))
    short = int((data.train.token_counts(data.pad_id) < 16).sum())
    assert aggregates["extract_left_out"] == short == data.train.num_examples - len(frame)
    assert short > 0 and np.isin(frame["example_id"], np.asarray(data.train.example_ids)).all()
    assert ((frame["score"] >= 0) & (frame["score"] <= 1)).all()
    assert (frame["memorized"] == (frame["prefix_match"] == 8)).all()
    assert (frame["prefix_match"] <= frame["score"] * 8 + 1e-9).all()  # leading matches are matches


@pytest.mark.slow
def test_eval_bad_input(run_dir):
    proc = run_memdyn("eval", f"--workdir={run_dir}", "--set=nonsense")
    assert proc.returncode == 2 and "--set='nonsense' is not a set of this run" in proc.stderr
    proc = run_memdyn("eval", f"--workdir={run_dir}", "--set=validation", "--step=3")
    assert proc.returncode == 2 and "--step=3: no such checkpoint" in proc.stderr
    proc = run_memdyn("eval", f"--workdir={run_dir}", "--set=validation", "--extract")
    assert proc.returncode == 2 and "at least prompt_len + num_new = 64" in proc.stderr
