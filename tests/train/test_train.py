"""The train step, the loop's output files, the step-indexed order and `memdyn rows`."""

import os

import jax
import numpy as np
import optax
import pandas as pd
import pytest
from flax import nnx

from conftest import run_memdyn, tiny_config
from memdyn.data import build
from memdyn.data.order import PADDING_ROW, StepOrder
from memdyn.train import job, optimizer, results, writers
from memdyn.train import steps as core


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 12-step nano run trained through the public entry point."""
    workdir = str(tmp_path_factory.mktemp("run"))
    job.train(tiny_config(num_steps=12), workdir)
    return workdir


@pytest.mark.slow
def test_step_metrics_equal_numpy_on_the_same_logits(tmp_path):
    config = tiny_config()
    data = build.prepare(config, str(tmp_path))
    run = core.build_run(config, data)
    params, opt_state = core.init_state(run)
    step_fn = core.make_train_step(run)
    with run.context():
        for step in range(3):  # train a little so the argmax is not uniform noise
            params, opt_state, _ = step_fn(params, opt_state, run.feeder.train_batch(step), np.int32(step))
        order_rows = run.order.rows(3)
        rows = run.data.train.rows(order_rows[order_rows != PADDING_ROW])
        model = nnx.merge(run.graphdef, nnx.State(jax.device_get(params)))
        inputs = rows["tokens"][:, :-1]
        logits = np.asarray(model(inputs, valid_BxL=inputs != 0))
        _, _, m = step_fn(params, opt_state, run.feeder.train_batch(3), np.int32(3))
    real = order_rows != PADDING_ROW
    m = {k: np.asarray(v)[real] if k.endswith("_B") else v for k, v in m.items()}
    np.testing.assert_array_equal(m["example_ids_B"], rows["example_ids"])  # results line up with the rows
    np.testing.assert_array_equal(m["doc_ids_B"], rows["doc_ids"])
    targets = rows["tokens"][:, 1:]
    weights = targets != 0
    correct = (logits.argmax(-1) == targets) & weights
    assert correct.sum() > 0
    np.testing.assert_allclose(m["mem_update"], correct.sum() / weights.sum(), rtol=1e-6)
    np.testing.assert_allclose(m["exact_match_B"], correct.sum(1) / weights.sum(1), rtol=1e-6)
    np.testing.assert_allclose(m["num_tokens_B"], weights.sum(1))
    assert float(m["lr"]) == pytest.approx(float(run.schedule(3)))


def test_order_trains_every_example_once_per_epoch():
    order = StepOrder(num_examples=103, batch_size=10, seed=7)
    assert order.steps_per_epoch == 11  # 103 = 4 batches of 10 + 7 of 9, each completed to 10 with padding
    for epoch in range(3):
        batches = [order.rows(epoch * 11 + s) for s in range(11)]
        assert all(len(b) == 10 for b in batches)
        real = np.concatenate([b[b != PADDING_ROW] for b in batches])
        assert sorted(real) == list(range(103))  # every example exactly once, none dropped
        assert sorted(int((b != PADDING_ROW).sum()) for b in batches) == [9] * 7 + [10] * 4
        assert order.examples_seen((epoch + 1) * 11) == 103 * (epoch + 1)
    assert not np.array_equal(order.rows(0), order.rows(11))  # a new permutation each epoch
    np.testing.assert_array_equal(order.rows(25), StepOrder(103, 10, 7).rows(25))  # pure function of (seed, step)
    assert not np.array_equal(order.rows(25), StepOrder(103, 10, 8).rows(25))
    exact = StepOrder(num_examples=40, batch_size=8, seed=0)  # N divisible by B: no padding at all
    assert exact.steps_per_epoch == 5 and all((exact.rows(s) != PADDING_ROW).all() for s in range(10))


@pytest.mark.slow
def test_after_k_epochs_every_example_was_trained_k_times(tmp_path):
    """Counted from the per-example records the loop wrote, on a set that does not divide into batches."""
    workdir = str(tmp_path)
    config = tiny_config(num_steps=1)
    data = build.prepare(config, workdir)
    spe = -(-data.train.num_examples // config.batch_size)
    assert data.train.num_examples % config.batch_size, "the test needs N mod B > 0"
    job.train(tiny_config(num_steps=3 * spe), workdir)
    records = writers.read_examples(os.path.join(workdir, "examples"))
    for k in (1, 2, 3):
        seen = records[records["step"] < k * spe]["example_id"].value_counts()
        assert len(seen) == data.train.num_examples and (seen == k).all()
    frame = pd.read_csv(os.path.join(workdir, "train.csv"))
    assert frame["examples_seen"].iloc[-1] == 3 * data.train.num_examples


@pytest.mark.slow
def test_train_writes_csv_records_and_config(trained_run):
    frame = pd.read_csv(os.path.join(trained_run, "train.csv"))
    assert list(frame.columns) == list(results.TRAIN_CSV_COLUMNS)
    assert frame["step"].tolist() == list(range(12))
    per_step = writers.read_examples(os.path.join(trained_run, "examples")).groupby("step").size()
    np.testing.assert_array_equal(frame["examples_seen"], per_step.cumsum().to_numpy())  # real examples only
    assert frame["tokens_seen"].is_monotonic_increasing
    assert (frame["size"] == "nano").all() and (frame["params"] > 0).all()
    assert np.isfinite(frame["loss"]).all() and frame["loss"].iloc[-1] < frame["loss"].iloc[0]
    records = writers.read_examples(os.path.join(trained_run, "examples"))
    assert len(records) == 12 * 8
    # the mean of per-example exact match weighted by tokens is the batch's mem_update
    for step, group in records.groupby("step"):
        weighted = (group["exact_match"] * group["num_tokens"]).sum() / group["num_tokens"].sum()
        assert weighted == pytest.approx(frame.loc[frame.step == step, "mem_update"].item(), abs=1e-5)
    assert os.listdir(os.path.join(trained_run, "tensorboard"))
    assert os.path.exists(os.path.join(trained_run, "config.json"))


@pytest.mark.slow
def test_a_run_s_files_are_readable_as_the_umask_says(trained_run):
    """Every file and directory of a run (config.json, train.png, record parts, data stores, checkpoints) has the
    mode a plain open() or mkdir gives under the umask, as train.csv has: none is tempfile's private 0600 or 0700."""
    import stat

    from memdyn.rundir import runs

    modes = {}
    for root, dirs, files in os.walk(trained_run):
        for name in dirs + files:
            path = os.path.join(root, name)
            expected = runs.plain_mode(directory=name in dirs)
            if stat.S_IMODE(os.stat(path).st_mode) != expected:
                modes[os.path.relpath(path, trained_run)] = oct(stat.S_IMODE(os.stat(path).st_mode))
    assert modes == {}, f"umask {oct(runs.umask())}"


@pytest.mark.slow
def test_rows_command_matches_what_the_step_trained_on(trained_run):
    records = writers.read_examples(os.path.join(trained_run, "examples"))
    for step in (0, 7):
        proc = run_memdyn("rows", f"--workdir={trained_run}", f"--step={step}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line.split("\t") for line in proc.stdout.splitlines()]
        assert {kind for kind, _ in lines} == {"train"}
        printed = [int(example_id) for _, example_id in lines]
        assert sorted(printed) == sorted(records.loc[records.step == step, "example_id"].tolist())
    proc = run_memdyn("rows", f"--workdir={trained_run}", "--step=3", "--text")
    first = proc.stdout.splitlines()[0].split("\t")
    assert len(first) == 3 and len(first[2].split()) > 5


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_numbers(trained_run, tmp_path):
    job.train(tiny_config(num_steps=12), str(tmp_path))
    a = pd.read_csv(os.path.join(trained_run, "train.csv"))
    b = pd.read_csv(os.path.join(tmp_path, "train.csv"))
    cols = ["loss", "mem_update", "grad_norm", "lr"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


@pytest.mark.slow
def test_masked_lm_trains(tmp_path):
    result = job.train(tiny_config(**{"model.causal": False, "num_steps": 4}), str(tmp_path))
    frame = pd.read_csv(os.path.join(tmp_path, "train.csv"))
    # only ~15% of real tokens are targets
    real = frame["tokens_seen"].diff().fillna(frame["tokens_seen"].iloc[0])
    assert ((frame["num_tokens"] / real) < 0.3).all() and (frame["num_tokens"] > 0).all()
    assert np.isfinite(result["loss"])


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "polynomial"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    opt = tiny_config().optimizer
    opt.schedule, opt.warmup_steps, opt.lr, opt.end_lr_fraction, opt.power = schedule, 10, 1.0, 0.1, 2.0
    f = optimizer.make_schedule(opt, num_steps=110)
    assert float(f(0)) == 0.0 and float(f(5)) == pytest.approx(0.5) and float(f(10)) == pytest.approx(1.0)
    end = float(f(110))
    assert end == pytest.approx(1.0 if schedule == "constant" else 0.1, abs=1e-6)
    if schedule == "polynomial":  # (1 - t)^2 decay lies below the linear one halfway
        assert float(f(60)) < 0.55


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error(tmp_path):
    # a learning rate this large overflows the parameters within a few steps
    config = tiny_config(num_steps=30, **{"optimizer.lr": 1e30, "optimizer.grad_clip": 0.0})
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+"):
        job.train(config, str(tmp_path))


def test_clipping_and_weight_decay_mask():
    opt = tiny_config().optimizer
    opt.grad_clip, opt.weight_decay, opt.warmup_steps = 1.0, 0.5, 0
    tx, _ = optimizer.make_optimizer(opt, 10)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones((2,), np.float32)}
    grads = {"kernel": np.zeros((2, 2), np.float32), "bias": np.zeros((2,), np.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.asarray(updates["kernel"]) < 0)  # decayed
    assert np.all(np.asarray(updates["bias"]) == 0)  # not decayed
    big = {"kernel": np.full((2, 2), 100.0, np.float32), "bias": np.zeros((2,), np.float32)}
    clipped = optax.clip_by_global_norm(1.0).update(big, None)[0]
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0)


@pytest.mark.slow
def test_a_run_shorter_than_its_warmup_just_runs(tmp_path):
    summary = job.train(tiny_config(num_steps=3, **{"optimizer.warmup_steps": 50}), str(tmp_path))
    assert summary["step"] == 2 and summary["lr"] < 1e-3  # still warming up


def test_token_counts_are_integers_in_every_file(trained_run):
    records = writers.read_examples(os.path.join(trained_run, "eval_examples"))
    assert pd.api.types.is_integer_dtype(records["num_tokens"])
    assert pd.api.types.is_integer_dtype(writers.read_examples(os.path.join(trained_run, "examples"))["num_tokens"])
    assert pd.api.types.is_integer_dtype(pd.read_csv(os.path.join(trained_run, "eval.csv"))["num_tokens"])


def test_a_finished_run_reports_its_evaluations(trained_run):
    from memdyn.train.job import final_report

    text = final_report(trained_run, {"step": 11, "loss": 5.0, "mem_update": 0.1})
    evals = pd.read_csv(os.path.join(trained_run, "eval.csv"))
    last = evals[evals["set"] == "validation"].iloc[-1]
    assert "12 steps" in text and f"validation: M(f) {last['exact_match']:.4f}" in text and "train: M(f)" in text
    listed = text.rsplit("files: ", 1)[1].split(", ")  # what is in the workdir, directories with a slash
    assert (
        "checkpoints/" in listed
        and "train.csv" in listed
        and len(listed) == len([n for n in os.listdir(trained_run) if not n.startswith(".")])
    )


def test_the_evaluations_around_an_insertion_say_which_is_which(caplog):
    """The inserted set is evaluated twice at its insertion step: the lines say before and after, as eval.csv's
    at_insertion does; other evaluations keep their plain line."""
    from clu import metric_writers

    from memdyn.train.progress import Progress

    progress = Progress(40, metric_writers.MultiWriter([]))
    with caplog.at_level("INFO"):
        progress.evaluated(28, "special", 0.25, 3.0, at_insertion="before")
        progress.evaluated(28, "special", 0.75, 1.0, at_insertion="after")
        progress.evaluated(30, "special", 0.5, 2.0)
        progress.evaluated(28, "special", 0.25, 3.0, at_insertion="after", sham=True)
    lines = [r.getMessage() for r in caplog.records if ": eval " in r.getMessage()]
    assert lines == [
        "step 28: eval special (before insertion)  M(f) 0.2500  loss 3.0000",
        "step 28: eval special (after insertion)  M(f) 0.7500  loss 1.0000",
        "step 30: eval special  M(f) 0.5000  loss 2.0000",
        "step 28: eval special (after sham insertion)  M(f) 0.2500  loss 3.0000",
    ]


@pytest.mark.parametrize("sham", [True, False])
def test_the_final_report_says_what_was_inserted(tmp_path, sham):
    """A sham fork reports 0 inserted updates and that it is a sham; an insertion fork the rows it inserted."""
    import json

    from memdyn.train.job import final_report

    insert = {"set": "special", "at_step": 28, "repeats": 2, "times": 1, "every": 0, "eval_every": 5, "sham": sham}
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"num_steps": 40, "insert": insert}, f)
    header = ",".join(results.INSERT_CSV_COLUMNS)
    rows = "" if sham else "\n".join(f"28,{u},special,{u},0,1.0,0.5,0.001,1.0" for u in range(2))
    (tmp_path / "insertions.csv").write_text(header + "\n" + rows)
    text = final_report(str(tmp_path), {"step": 39, "loss": 5.0, "mem_update": 0.1})
    if sham:
        assert "insertion: sham of set 'special' at step 28: 0 inserted updates" in text
    else:
        assert "insertion: set 'special' at step 28: 2 inserted updates" in text


def test_train_png_draws_every_evaluated_set_but_not_modes_or_insertions(tmp_path):
    import pandas as pd

    from memdyn.rundir import plots

    steps = np.arange(20)
    pd.DataFrame(
        {
            "step": steps,
            "epochs_done": (steps + 1) / 10,
            "loss": 5 - steps / 10,
            "mem_update": steps / 100,
            "size": "nano",
            "params": 1000,
            "seed": 0,
            "peak_lr": 1e-3,
        }
    ).to_csv(tmp_path / "train.csv")
    rows = [
        ("validation", 0, ""),
        ("validation", 10, ""),
        ("special", 10, "before"),
        ("validation@dropout", 10, ""),
        ("duplicates", 20, ""),
    ]
    pd.DataFrame(
        [{"set": s, "step": t, "at_insertion": a, "loss": 4.0, "exact_match": 0.3} for s, t, a in rows]
    ).to_csv(tmp_path / "eval.csv", index=False)
    labels = plots.plot_training(
        str(tmp_path / "train.csv"), str(tmp_path / "train.png"), eval_csv=str(tmp_path / "eval.csv")
    )
    assert labels == [
        "train (per update)",
        "validation",
        "duplicates",
        "M_update (rolling 5)",
        "M(f) validation",
        "M(f) duplicates",
    ]
    assert (tmp_path / "train.png").stat().st_size > 0
    assert plots.plot_training(str(tmp_path / "train.csv"), str(tmp_path / "t2.png")) == [
        "train (per update)",
        "M_update (rolling 5)",
    ]  # without eval.csv: the training curves alone
