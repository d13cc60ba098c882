"""Bad input fails before any compute, with a message naming the offending value, and loses nothing."""

import os

import numpy as np
import pytest

from conftest import run_memdyn, run_python, tiny_config
from memdyn.data.store import ExampleStore, write_store
from memdyn.train import job

TINY_FLAGS = [
    "--config.model.size=nano",
    "--config.num_steps=2",
    "--config.batch_size=8",
    "--config.data.seq_len=32",
    "--config.data.synthetic.num_train_docs=40",
    "--config.data.synthetic.vocab_size=256",
    "--config.optimizer.warmup_steps=1",
]


def _fails(tmp_path, *flags):
    workdir = str(tmp_path / "run")
    config = [f for f in flags if f.startswith("--config=")]  # before any --config.<field>
    proc = run_memdyn("train", f"--workdir={workdir}", *config, *TINY_FLAGS, *(f for f in flags if f not in config))
    assert proc.returncode != 0
    assert not os.path.exists(os.path.join(workdir, "train.csv")), "failed after compute started"
    assert not os.path.exists(workdir), "a run that never started left its directory behind"
    return proc.stderr


def test_unknown_config_field(tmp_path):
    assert "no_such_field" in _fails(tmp_path, "--config.model.no_such_field=3")
    # a mistyped field: one line naming the flag, with the did-you-mean hint, and exit status 2 (no traceback)
    proc = run_memdyn("train", f"--workdir={tmp_path / 'typo'}", "--config.model.sizee=tiny")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("memdyn")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines == [
        'memdyn: error: --config.model.sizee: unknown config field \'sizee\' (Did you mean "size" instead of "sizee"?)'
    ]
    assert not os.path.exists(tmp_path / "typo")


@pytest.mark.slow
def test_unknown_size_preset(tmp_path):
    assert "config.model.size='giant'" in _fails(tmp_path, "--config.model.size=giant")


@pytest.mark.slow
def test_mesh_that_does_not_fit_the_devices(tmp_path):
    err = _fails(tmp_path, "--config.sharding.mesh=(2,2,1)")
    assert "config.sharding.mesh=(2, 2, 1)" in err and "1 are available" in err


@pytest.mark.slow
def test_sequence_longer_than_position_table(tmp_path):
    err = _fails(tmp_path, "--config.model.max_len=16")
    assert "config.data.seq_len=32" in err and "max_len=16" in err


@pytest.mark.slow
def test_missing_dataset(tmp_path):
    err = _fails(tmp_path, "--config.data.source=store", f"--config.data.store={tmp_path}/nowhere")
    assert "nowhere" in err and "does not exist" in err


@pytest.mark.slow
def test_vocabulary_larger_than_the_text_supports(tmp_path):
    """config.data.vocab.size is exact: 8000 on a small text corpus stops with the largest size it can fill."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    (corpus / "a.txt").write_text("\n".join(" ".join(words[(i + j) % 8] for j in range(20)) + "." for i in range(30)))
    err = _fails(tmp_path, f"--config=text:{corpus}", "--config.data.vocab.size=8000")
    assert (
        "memdyn train: error: config.data.vocab.size=8000: the 30 documents it is trained on support a unigram "
        "vocabulary of at most" in err
    )


@pytest.mark.slow
def test_document_ids_with_a_cut_word_vocabulary_are_refused(tmp_path):
    err = _fails(tmp_path, "--config=tfds_synthetic:doc_ids", "--config.data.vocab.size=100")
    assert "config.data.doc_ids='prefix' with a word vocabulary needs every word kept" in err


@pytest.mark.slow
def test_unknown_schedule(tmp_path):
    assert "config.optimizer.schedule='steep'" in _fails(tmp_path, "--config.optimizer.schedule=steep")


def test_empty_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_store(str(tmp_path / "s"), tokens=np.zeros((0, 8), np.int32), example_ids=[], doc_ids=[])
    os.makedirs(tmp_path / "e")
    np.save(tmp_path / "e" / "tokens.npy", np.zeros((0, 8), np.int32))
    for name in ("example_ids", "doc_ids"):
        np.save(tmp_path / "e" / f"{name}.npy", np.zeros((0,), np.int64))
    (tmp_path / "e" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="is empty"):
        ExampleStore(str(tmp_path / "e"))


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ValueError, match="fewer than config.batch_size=4096"):
        job.train(tiny_config(batch_size=4096), str(tmp_path))


@pytest.mark.slow
def test_batch_not_divisible_by_data_axes():
    proc = run_python(
        "import sys, tempfile; sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_config\nfrom memdyn.train import steps as core\nfrom memdyn.data import build\n"
        "c = tiny_config(batch_size=6); c.sharding.mesh = (4, 1, 1)\n"
        "core.build_run(c, build.prepare(c, tempfile.mkdtemp()))\n",
        devices=4,
    )
    assert proc.returncode != 0
    assert "config.batch_size=6 is not divisible by the 4 data-parallel shards" in proc.stderr


@pytest.mark.slow
def test_workdir_with_another_run_is_not_touched(tmp_path):
    workdir = str(tmp_path)
    job.train(tiny_config(num_steps=2), workdir)
    csv_path = os.path.join(workdir, "train.csv")
    before = open(csv_path).read()
    with pytest.raises(ValueError, match=r"optimizer\.lr: 0\.001 != 0\.5"):
        job.train(tiny_config(num_steps=2, **{"optimizer.lr": 0.5}), workdir)
    with pytest.raises(ValueError, match=r"data\.seq_len: 32 != 16"):
        job.train(tiny_config(num_steps=2, **{"data.seq_len": 16}), workdir)
    assert job.train(tiny_config(num_steps=2), workdir)["complete"]  # the same run: nothing to do
    assert open(csv_path).read() == before


def _config_importing_a_moved_module(tmp_path):
    path = tmp_path / "old_config.py"
    path.write_text(
        "from memdyn.sharding import DEFAULT_RULES\n\n"
        "from memdyn.configs import base\n\n\n"
        "def get_config():\n    return base.get_config()\n"
    )
    return str(path)


def test_a_config_importing_a_moved_module_names_its_new_home(tmp_path):
    from memdyn import config as config_lib

    with pytest.raises(ImportError, match=r"imports memdyn\.sharding, which moved to memdyn\.model\.sharding"):
        config_lib.load_config_file(_config_importing_a_moved_module(tmp_path))


@pytest.mark.slow
def test_the_command_refuses_a_config_importing_a_moved_module_in_one_line(tmp_path):
    path = _config_importing_a_moved_module(tmp_path)
    proc = run_memdyn("train", f"--config={path}", f"--workdir={tmp_path / 'w'}", "--dry_run")
    assert proc.returncode == 2, proc.stderr
    assert f"--config={path}: the config file imports memdyn.sharding, which moved to memdyn.model.sharding" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_a_misspelt_config_name_lists_the_packaged_configs():
    from memdyn.cli import command, main

    train = main.commands()["train"]
    with pytest.raises(command.UsageError) as error:
        command.parse(train, ["--config=memorizaton", "--workdir=unused"])
    message = str(error.value)
    assert message.startswith("--config=memorizaton: not a config file or a packaged config"), message
    assert "the packaged configs: base, forgetting, learning_rate, masked_lm, memorization, memsinks" in message
