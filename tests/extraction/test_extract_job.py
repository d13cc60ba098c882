"""`memdyn extract`: every source scored alike, the continuation loss recomputed from the checkpoint's model,
resumed scoring equal to uninterrupted scoring, GPT-NeoX indexed files, bad input named."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import run_memdyn, tiny_config
from memdyn.data import indexed, run_data, token_sources
from memdyn.extraction import eval_checkpoint, extract_job
from memdyn.rundir import runs
from memdyn.train import job as lifecycle
from memdyn.train import steps as core

M, N = 8, 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    lifecycle.train(tiny_config(num_steps=8), workdir)
    return workdir


@pytest.fixture(scope="module")
def train_tokens(run_dir):
    data = run_data.open_run_data(run_dir, runs.load_config(run_dir))
    full = data.train.token_counts(data.pad_id) >= M + N
    return np.asarray(data.train.tokens)[full], np.asarray(data.train.example_ids)[full], int((~full).sum())


def _extract(run_dir, out, **kwargs):
    return extract_job.run_extract(run_dir, out=str(out), prompt_len=M, num_new=N, **kwargs)


@pytest.mark.slow
def test_train_set_one_pass_and_score_equal_eval_extract_and_the_loss_is_recomputed(run_dir, train_tokens, tmp_path):
    totals = _extract(run_dir, tmp_path / "train.csv", set_name="train", score=True)
    frame = pd.read_csv(tmp_path / "train.csv")
    assert list(frame.columns) == extract_job.COLUMNS
    tokens, ids, short = train_tokens
    assert totals["scored"] == len(frame) == len(ids) and totals["left_out"] == short
    assert (frame["example_id"].to_numpy() == ids).all()
    eval_checkpoint.evaluate_checkpoint(run_dir, "train", extract_k=True, prompt_len=M, num_new=N)
    reference = pd.read_csv(os.path.join(run_dir, "evals", "train-8-extract.csv"))
    pd.testing.assert_frame_equal(frame.drop(columns="loss"), reference.drop(columns="loss"), check_dtype=False)
    # the loss, independently: log-softmax of the restored model's logits at the continuation positions (NumPy)
    config = runs.load_config(run_dir)
    run = core.build_run(config, run_data.open_run_data(run_dir, config))
    restored = eval_checkpoint.restore(run, run_dir, None)
    from memdyn.extraction.extractability import _merge

    model = _merge(run.graphdef, restored.params)
    logits = np.asarray(model(tokens[:, : M + N - 1]), np.float64)[:, M - 1 :]
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    truth = tokens[:, M : M + N]
    loss = -np.take_along_axis(log_probs, truth[..., None], -1)[..., 0].mean(1)
    np.testing.assert_allclose(frame["loss"], loss, rtol=1e-5, atol=1e-6)
    prefix = np.cumprod(logits.argmax(-1) == truth, axis=1).sum(1)
    assert (frame["prefix_match"].to_numpy() == prefix).all()
    assert json.load(open(str(tmp_path / "train.csv") + ".json"))["scored"] == len(frame)


def test_npy_and_indexed_sources_score_the_same_sequences_alike(run_dir, train_tokens, tmp_path):
    tokens, _, _ = train_tokens
    tokens = tokens[:, : M + N]
    np.save(tmp_path / "tokens.npy", tokens)
    _extract(run_dir, tmp_path / "npy.csv", tokens=str(tmp_path / "tokens.npy"))
    from_npy = pd.read_csv(tmp_path / "npy.csv")
    assert (from_npy["example_id"] == np.arange(len(tokens))).all() and from_npy["score"].isna().all()
    # an indexed file with every third sequence too short: those are left out, ids stay sequence indices
    sequences = [t if i % 3 else t[: M + N - 1] for i, t in enumerate(tokens)]
    indexed.write_indexed(str(tmp_path / "data"), sequences)
    totals = _extract(run_dir, tmp_path / "idx.parquet", indexed=str(tmp_path / "data"), rows=f"2:{len(tokens)}")
    from_idx = pd.read_parquet(tmp_path / "idx.parquet")
    kept = [i for i in range(2, len(tokens)) if i % 3]
    assert totals["left_out"] == len(tokens) - 2 - len(kept)
    assert from_idx["example_id"].tolist() == kept
    expected = from_npy.set_index("example_id").loc[kept].reset_index()
    pd.testing.assert_frame_equal(from_idx, expected, check_dtype=False)
    # --steps=a:b are rows [a·r, b·r)
    _extract(run_dir, tmp_path / "steps.csv", indexed=str(tmp_path / "data"), steps="1:3", rows_per_step=4)
    assert pd.read_csv(tmp_path / "steps.csv")["example_id"].tolist() == [i for i in range(4, 12) if i % 3]


def test_indexed_reader_round_trips_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in (np.uint16, np.int32, np.int64):
        sequences = [rng.integers(0, 30_000, size=n).astype(dtype) for n in (5, 9, 7)]
        indexed.write_indexed(str(tmp_path / "d"), sequences, dtype)
        data = indexed.IndexedDataset(str(tmp_path / "d"))
        assert len(data) == 3 and data.sizes.tolist() == [5, 9, 7] and data.dtype == dtype
        np.testing.assert_array_equal(data.rows(np.array([1, 2]), 5), np.stack([sequences[1][:5], sequences[2][:5]]))
        with pytest.raises(ValueError, match="shorter than 6"):
            data.rows(np.array([0]), 6)
    (tmp_path / "bad.idx").write_bytes(b"not an index at all, really not" * 2)
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a GPT-NeoX indexed dataset"):
        indexed.IndexedDataset(str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="nowhere.idx does not exist"):
        indexed.IndexedDataset(str(tmp_path / "nowhere"))


def test_interrupted_scoring_resumes_to_the_same_file(run_dir, tmp_path, monkeypatch):
    whole = tmp_path / "whole.csv"
    _extract(run_dir, whole, set_name="train", score=True, batch_size=8, chunk_batches=1)
    calls, real = [], extract_job._score_chunk

    def dies_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kwargs)

    out = tmp_path / "resumed.csv"
    monkeypatch.setattr(extract_job, "_score_chunk", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        _extract(run_dir, out, set_name="train", score=True, batch_size=8, chunk_batches=1)
    assert not out.exists() and len(os.listdir(str(out) + ".parts")) == 4  # job.json and three parts
    with pytest.raises(ValueError, match=r"asked for differently \(num_new: 8 -> 4\)"):
        extract_job.run_extract(
            run_dir, out=str(out), set_name="train", score=True, batch_size=8, chunk_batches=1, prompt_len=M, num_new=4
        )
    scored = []
    monkeypatch.setattr(extract_job, "_score_chunk", lambda *a, **k: scored.append(a[3]) or real(*a, **k))
    _extract(run_dir, out, set_name="train", score=True, batch_size=8, chunk_batches=1)
    assert whole.read_bytes() == out.read_bytes()
    assert len(scored) == -(-pd.read_csv(whole).shape[0] // 8) - 3  # only the chunks not yet written
    assert not os.path.exists(str(out) + ".parts")
    # run again: complete already, nothing scored; asked differently: refused, the file kept
    scored.clear()
    _extract(run_dir, out, set_name="train", score=True, batch_size=8, chunk_batches=1)
    assert not scored
    with pytest.raises(FileExistsError, match="holds another extraction"):
        _extract(run_dir, out, set_name="validation", score=True, batch_size=8, chunk_batches=1)
    assert whole.read_bytes() == out.read_bytes()


def test_bad_input_is_named_before_scoring(run_dir, tmp_path):
    np.save(tmp_path / "big.npy", np.full((3, 16), 10_000, np.int64))
    np.save(tmp_path / "short.npy", np.zeros((3, 10), np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.int64))
    cases = [
        ({"tokens": str(tmp_path / "empty.npy")}, "empty.npy' holds no sequences"),
        ({"set_name": "train", "tokens": str(tmp_path / "big.npy")}, "name one source"),
        ({"set_name": "nope"}, "--set='nope' is not a set"),
        ({"tokens": str(tmp_path / "big.npy")}, "outside the model's vocabulary"),
        ({"tokens": str(tmp_path / "short.npy")}, "sequences of 10 tokens, shorter than"),
        ({"tokens": str(tmp_path / "none.npy")}, "does not exist"),
        ({"set_name": "train", "rows": "0:4"}, "--rows/--steps select rows of --indexed"),
        ({"set_name": "train", "out": str(tmp_path / "x.txt")}, "expected a .csv or .parquet"),
        ({"set_name": "train", "step": 3}, "--step=3: no such checkpoint"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("out", str(tmp_path / "o.csv"))
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            extract_job.run_extract(run_dir, prompt_len=M, num_new=N, **kwargs)
    indexed.write_indexed(str(tmp_path / "d"), [np.arange(20)] * 4)
    for rows, message in (("3:2", "expected a:b"), ("0:9", "has 4 sequences")):
        with pytest.raises(ValueError, match=message):
            extract_job.run_extract(
                run_dir, out=str(tmp_path / "o.csv"), indexed=str(tmp_path / "d"), rows=rows, prompt_len=M, num_new=N
            )
    with pytest.raises(ValueError, match="max_len"):
        extract_job.run_extract(run_dir, set_name="train", prompt_len=512, num_new=512)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_command_line(run_dir, tmp_path):
    out = tmp_path / "cli.csv"
    proc = run_memdyn(
        "extract",
        f"--workdir={run_dir}",
        "--set=validation",
        f"--out={out}",
        "--prompt_len=8",
        "--num_new=8",
        "--score",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memorized_fraction:" in proc.stdout and f"out: {out}" in proc.stdout
    assert len(pd.read_csv(out)) > 0
    proc = run_memdyn("extract", f"--workdir={run_dir}", "--set=validation", "--parallel=2")
    assert proc.returncode != 0 and "--parallel is not a flag of `memdyn extract`" in proc.stderr


def test_the_checkpoint_tokens_are_recorded_and_a_job_killed_before_its_file_recovers(run_dir, tmp_path):
    out = tmp_path / "t.csv"
    totals = _extract(run_dir, out, set_name="validation")
    train = pd.read_csv(os.path.join(run_dir, "train.csv"))
    assert totals["tokens_seen"] == train[train["step"] == totals["step"] - 1]["tokens_seen"].item()
    expected = out.read_bytes()
    # killed after the sidecar, before the file and the removal of the parts: the next run writes the file
    parts = str(out) + ".parts"
    extract_job._resume_point(parts, {**{k: totals[k] for k in extract_job._RESUMABLE}})
    pd.read_csv(out).to_csv(os.path.join(parts, "part-000000000.csv"), index=False)
    out.unlink()
    _extract(run_dir, out, set_name="validation")
    assert out.read_bytes() == expected and not os.path.exists(parts)


def test_indexed_files_that_cannot_be_read_are_named(tmp_path):
    indexed.write_indexed(str(tmp_path / "d"), [np.arange(10)] * 3)
    with open(tmp_path / "d.bin", "r+b") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="d.bin holds 20 bytes, its index says at least 60"):
        indexed.IndexedDataset(str(tmp_path / "d"))
    indexed.write_indexed(str(tmp_path / "e"), [])
    with pytest.raises(ValueError, match="holds no sequence"):
        indexed.IndexedDataset(str(tmp_path / "e"))


def test_an_empty_tokens_file_is_refused_before_any_compute(tmp_path):
    """0 sequences used to "succeed" with NaN totals; the error names the file (the CLI exits 2 on ValueError)."""
    path = tmp_path / "none.npy"
    np.save(path, np.zeros((0, 64), np.int32))
    with pytest.raises(ValueError, match=r"--tokens='.*none\.npy' holds no sequences \(shape \(0, 64\)\)"):
        token_sources.open_source(None, length=16, vocab_size=100, tokens=str(path))


def test_default_out_is_named_after_the_source_file():
    """--tokens=tokens.npy at step 1000 gave tokens-tokens-1000.csv; now the file's stem, other sources unchanged."""
    out = lambda spec, **kw: extract_job.default_out("/w", spec, 1000, **kw)  # noqa: E731
    assert out({"tokens": "/data/tokens.npy", "shape": [3, 64]}) == "/w/extract/tokens-1000.csv"
    assert out({"tokens": "/data/pile_sample.npy"}) == "/w/extract/pile_sample-1000.csv"
    # a stem that names a set of the run keeps the prefix: train-<S>.csv is what `memdyn analyze predict` reads
    assert out({"tokens": "/data/train.npy"}) == "/w/extract/tokens-train-1000.csv"
    assert out({"tokens": "/data/special.npy"}, set_names=["special"]) == "/w/extract/tokens-special-1000.csv"
    assert out({"set": "train"}) == "/w/extract/train-1000.csv"
    assert out({"indexed": "/d/pile", "rows": [0, 8]}) == "/w/extract/indexed-pile-0_8-1000.csv"


def test_progress_counts_sequences_per_second_with_an_eta():
    now = [0.0]
    report = extract_job.SequenceProgress(1000, done=100, every_secs=5.0, clock=lambda: now[0])
    now[0] = 1.0
    assert report(200) is None  # within the interval
    now[0] = 10.0
    line = report(600)
    assert line == "scored 600 of 1,000 sequences (60.0%), 50.0 sequences/s, ETA 0m08s" and "steps" not in line
    now[0] = 11.0
    assert report(1000).startswith("scored 1,000 of 1,000 sequences (100.0%), 400.0 sequences/s, ETA 0m00s")
