"""Parts of speech (memdyn.studies.pos.counts): pos.csv's per-tag counts, from the train step and from tracked-set
evaluation,
equal a NumPy recomputation from the checkpoint's predictions, the store's tags and a token -> tag table counted
by hand."""

import collections
import os

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from memdyn.data import run_data
from memdyn.extraction import eval_checkpoint
from memdyn.extraction.extractability import _merge
from memdyn.rundir import runs
from memdyn.train import job, steps


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "masked"])
def pos_run(request, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pos"))
    job.train(tiny_config(num_steps=8, **{"model.causal": request.param}), workdir)
    return workdir


def _by_hand_token_tags(store, vocab_size):
    counts = collections.defaultdict(collections.Counter)
    for row_tokens, row_tags in zip(np.asarray(store.tokens), np.asarray(store.tags)):
        for token, tag in zip(row_tokens, row_tags):
            counts[int(token)][int(tag)] += 1
    table = np.zeros(vocab_size, np.int64)
    for token, c in counts.items():
        best = max(c.values())
        table[token] = min(tag for tag, n in c.items() if n == best)  # ties: the lowest tag, as argmax
    return table


def _expected(run, params, rows, store, step_key):
    """positions, right, exact per tag name for ``rows`` of ``store`` scored as the step scores them."""
    batch = run.feeder.batch(store, rows)
    forward = steps.make_forward(run)
    with run.context():
        m = forward(params, batch, step_key)
    return {k: np.asarray(v) for k, v in m.items() if k.startswith("pos_")}, batch


@pytest.mark.slow
def test_pos_csv_equals_a_numpy_recomputation(pos_run):
    config = runs.load_config(pos_run)
    data = run_data.open_run_data(pos_run, config)
    run = steps.build_run(config, data)
    names = list(data.train.manifest["tag_names"])
    assert run.tag_names == tuple(names)
    table = _by_hand_token_tags(data.train, data.vocab_size)
    np.testing.assert_array_equal(run.token_tags_V, table)
    frame = pd.read_csv(os.path.join(pos_run, "pos.csv"))
    assert set(frame["set"]) >= {"update", "validation"}
    params = eval_checkpoint.restore(run, pos_run, 4).params
    model = _merge(run.graphdef, params) if config.model.causal else None

    # the validation evaluation at step 4 (after 4 updates), recomputed in NumPy for a causal LM
    if config.model.causal:
        store = data.sets["validation"]
        tokens, tags = np.asarray(store.tokens), np.asarray(store.tags)
        valid = tokens != data.pad_id
        logits = np.asarray(model(tokens[:, :-1], valid_BxL=valid[:, :-1]))
        predicted, targets, target_tags = logits.argmax(-1), tokens[:, 1:], tags[:, 1:]
        scored = targets != data.pad_id
        for t, name in enumerate(names):
            at = scored & (target_tags == t)
            rows = frame[(frame["set"] == "validation") & (frame["step"] == 4) & (frame["tag"] == name)]
            if not at.any():
                assert rows.empty
                continue
            row = rows.iloc[0]
            assert row["positions"] == at.sum()
            assert row["right"] == (table[predicted][at] == t).sum()
            assert row["exact"] == (predicted[at] == targets[at]).sum()
            assert row["R"] == pytest.approx(row["right"] / row["positions"])

    # the update rows of step 4 (the step's batch, scored by the parameters before that update): every count
    # equals the step's own forward pass, and the positions add up to train.csv's scored tokens
    train = pd.read_csv(os.path.join(pos_run, "train.csv")).set_index("step")
    counts, _ = _expected(run, params, run.feeder.train_rows(4), data.train, np.int32(4))
    rows = frame[(frame["set"] == "update") & (frame["step"] == 4)].set_index("tag")
    for t, name in enumerate(names):
        n = counts["pos_positions_T"][t]
        if n == 0:
            assert name not in rows.index
            continue
        assert rows.loc[name, "positions"] == n
        assert rows.loc[name, "right"] == counts["pos_right_T"][t]
        assert rows.loc[name, "exact"] == counts["pos_exact_T"][t]
    assert rows["positions"].sum() == train.loc[4, "num_tokens"]
    update_rows = frame[frame["set"] == "update"]
    assert (update_rows.groupby("step")["positions"].sum() == train["num_tokens"]).all()


@pytest.mark.slow
def test_runs_without_tags_or_with_pos_off_write_no_pos_csv(tmp_path):
    job.train(tiny_config(num_steps=2, **{"eval.pos": False}), str(tmp_path / "off"))
    assert not (tmp_path / "off" / "pos.csv").exists()
