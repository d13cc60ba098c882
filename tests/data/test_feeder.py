"""The feeder is the one path to the device: normal steps, inserted updates, tracked-set evaluation and extraction
all receive the whole batch (tokens, example ids, document ids, tags), row for row what the stores hold."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from memdyn.data import build
from memdyn.data.feeder import PADDING_ROW, read_rows
from memdyn.extraction import extractability as extract
from memdyn.train import loop
from memdyn.train import steps as core


class Probe:
    """A batch metric that copies what the jitted step received back to the host (jax.debug.callback)."""

    def __init__(self):
        self.seen = []

    def __call__(self, batch, logits, targets, weights):
        jax.debug.callback(
            lambda *fields: self.seen.append([np.asarray(f) for f in fields]),
            batch["tokens_BxL"],
            batch["example_ids_B"],
            batch["doc_ids_B"],
            batch["tags_BxL"],
        )
        return {}


def _stores_by_example_id(data):
    """example id -> (store, row) over every store of the run (ids are unique within a run)."""
    where = {}
    for store in [data.train, *data.sets.values()]:
        for row, example_id in enumerate(np.asarray(store.example_ids)):
            where[int(example_id)] = (store, row)
    return where


@pytest.mark.slow
def test_train_insert_evaluate_and_extract_receive_the_whole_batch(tmp_path):
    config = tiny_config(num_steps=6, **{"insert.at_step": 2, "eval.every": 3})
    data = build.prepare(config, str(tmp_path))
    assert data.train.tags is not None and all(s.tags is not None for s in data.sets.values())
    probe = Probe()
    run = core.build_run(config, data, batch_metrics=(probe,))
    loop.Trainer(run, str(tmp_path)).train()
    jax.effects_barrier()

    where = _stores_by_example_id(data)
    received = {}
    for tokens, example_ids, doc_ids, tags in probe.seen:
        for i, example_id in enumerate(example_ids.tolist()):
            if example_id == -1:  # a padding row completing a set's last batch: nothing in it
                assert (tokens[i] == data.pad_id).all() and doc_ids[i] == -1 and (tags[i] == 0).all()
                continue
            store, row = where[example_id]
            np.testing.assert_array_equal(tokens[i], store.tokens[row])
            np.testing.assert_array_equal(tags[i], store.tags[row])
            assert doc_ids[i] == store.doc_ids[row]
            received.setdefault(store.path, set()).add(example_id)
    assert any((tags != 0).any() for *_, tags in probe.seen)  # real tags, not an all-zero stand-in
    # normal steps: every row of every step's batch; inserted updates and evaluations: whole sets
    trained = {int(e) for step in range(6) for e in np.asarray(data.train.example_ids)[run.order.rows(step)]}
    assert trained <= received[data.train.path]
    for name in ("special", "validation", "control"):
        assert received[data.sets[name].path] == set(np.asarray(data.sets[name].example_ids).tolist()), name

    # extraction takes the same batch and hands back its ids, aligned with its results
    store = data.sets["validation"]
    rows = run.feeder.set_rows(store, config.batch_size)[-1]  # the last batch, completed with padding rows
    assert (rows == PADDING_ROW).any()
    with run.context():
        batch = run.feeder.batch(store, rows)
        result = jax.device_get(
            extract.extractability(run.graphdef, jax.device_get(train_params(run, tmp_path)), batch, 8, 8)
        )
    expected = read_rows(store, rows, data.pad_id)
    np.testing.assert_array_equal(result["example_ids_B"], expected["example_ids_B"])
    np.testing.assert_array_equal(result["doc_ids_B"], expected["doc_ids_B"])
    assert set(batch) == {"tokens_BxL", "example_ids_B", "doc_ids_B", "tags_BxL", "seq_ids_BxL", "dup_counts_B"}


def train_params(run, workdir):
    from memdyn.train import checkpoint

    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), read_only=True)
    try:
        with run.context():
            return ckpt.restore(6, run.abstract_params, run.abstract_opt_state).params
    finally:
        ckpt.close()


def test_ids_that_do_not_fit_int32_are_refused(tmp_path):
    from memdyn.data.store import write_store

    store = write_store(
        str(tmp_path / "s"),
        tokens=np.ones((2, 4), np.int32),
        example_ids=[0, 2**40],
        doc_ids=[0, 1],
        manifest={"vocab_size": 8},
    )
    with pytest.raises(ValueError, match="example_ids do not fit in int32"):
        read_rows(store, np.array([0, 1]), 0)


def test_sequence_ids_are_a_store_column_and_an_old_store_hashes_its_rows_once(tmp_path, caplog):
    """A store written with a pad id keeps every row's sequence id (the hash of its real tokens) as a column that
    the feeder reads; a store written before the column (or without a pad id) hashes its rows once when first
    asked, saying so, to the same ids."""
    import logging
    import os

    from memdyn.data.store import ExampleStore, sequence_ids, write_store

    tokens = np.array([[5, 6, 7, 0], [5, 6, 7, 0], [8, 9, 0, 0]], np.int32)  # rows 0 and 1 the same sequence
    kept = write_store(
        str(tmp_path / "kept"), tokens=tokens, example_ids=[0, 1, 2], doc_ids=[0, 0, 1], manifest={"pad_id": 0}
    )
    expected = sequence_ids(tokens, 0)
    assert expected[0] == expected[1] != expected[2]
    assert os.path.exists(tmp_path / "kept" / "sequence_ids.npy")
    np.testing.assert_array_equal(kept.sequence_ids(0), expected)
    rows = np.array([2, PADDING_ROW, 0])
    np.testing.assert_array_equal(read_rows(kept, rows, 0)["seq_ids_BxL"][:, 0], [expected[2], 0, expected[0]])

    old = write_store(str(tmp_path / "old"), tokens=tokens, example_ids=[0, 1, 2], doc_ids=[0, 0, 1])
    assert not os.path.exists(tmp_path / "old" / "sequence_ids.npy")
    assert old.manifest["sha256"] == kept.manifest["sha256"]  # the column is derived: not part of the content
    with caplog.at_level(logging.INFO):
        np.testing.assert_array_equal(read_rows(old, rows, 0)["seq_ids_BxL"], read_rows(kept, rows, 0)["seq_ids_BxL"])
        np.testing.assert_array_equal(ExampleStore(str(tmp_path / "old")).sequence_ids(0), expected)
    assert sum("hashing its 3 rows once" in r.getMessage() for r in caplog.records) == 2  # once per opened store
    read_rows(old, rows, 0)  # the same store object: hashed already
    assert sum("hashing its 3 rows once" in r.getMessage() for r in caplog.records) == 2


def test_the_next_training_batch_is_prefetched_and_handed_over_unchanged(tmp_path):
    config = tiny_config(num_steps=3)
    run = core.build_run(config, build.prepare(config, str(tmp_path)))
    with run.context():
        fresh = [jax.device_get(run.feeder.train_batch(step)) for step in (1, 2)]
        run.feeder.prefetch(1)
        prefetched = run.feeder._prefetched[1]
        first = run.feeder.train_batch(1)
        assert first is prefetched  # handed over, not read again
        run.feeder.prefetch(5)  # a prefetch of another step is not handed over for step 2
        second = run.feeder.train_batch(2)
    for expected, got in zip(fresh, (first, second)):
        assert set(got) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(jax.device_get(got[name]), expected[name])
