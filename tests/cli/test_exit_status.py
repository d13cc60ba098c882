"""How a command's end becomes its exit status (memdyn.cli.main): 2 bad input, 1 a failed run (a NaN loss in one
line, an unexpected error with its traceback), 130 Ctrl-C, 143 SIGTERM; and the training guide lists them all."""

import dataclasses
import os
import re
import signal

import pytest

from conftest import REPO
from memdyn.cli import logs, main
from memdyn.cli import train as train_cli

NAN = "loss is nan at step 7 (train update 7, config.optimizer.lr=10.0); stopping"


def _train_ending_with(error, monkeypatch, capsys):
    """`memdyn train` whose run raises ``error``: (exit status, stderr)."""

    def run(args):
        raise error

    monkeypatch.setattr(train_cli, "COMMAND", dataclasses.replace(train_cli.COMMAND, run=run))
    monkeypatch.setattr(logs, "configure", lambda: None)
    with pytest.raises(SystemExit) as exited:
        main.main(["train", "--workdir=unused"])
    return exited.value.code, capsys.readouterr().err


def test_exit_statuses(monkeypatch, capsys):
    from memdyn.train.loop import Preempted

    monkeypatch.delenv("MEMDYN_TRACEBACK", raising=False)
    # a non-finite loss is a failed run, said in one line
    assert _train_ending_with(FloatingPointError(NAN), monkeypatch, capsys) == (1, f"memdyn train: error: {NAN}\n")
    assert _train_ending_with(ValueError("bad value"), monkeypatch, capsys) == (2, "memdyn train: error: bad value\n")
    saved = "saved checkpoint 5 in 'runs/r1'; run the same command again to resume from it"
    assert _train_ending_with(Preempted(f"SIGINT (Ctrl-C): {saved}", signal.SIGINT), monkeypatch, capsys) == (
        130,
        f"memdyn train: SIGINT (Ctrl-C): {saved}\n",
    )
    assert _train_ending_with(Preempted(f"SIGTERM: {saved}"), monkeypatch, capsys) == (
        143,
        f"memdyn train: SIGTERM: {saved}\n",
    )
    assert _train_ending_with(KeyboardInterrupt(), monkeypatch, capsys) == (130, "memdyn train: stopped by Ctrl-C\n")
    # an unexpected error keeps its traceback (Python then exits with 1)
    with pytest.raises(RuntimeError, match="a bug"):
        _train_ending_with(RuntimeError("a bug"), monkeypatch, capsys)
    monkeypatch.setenv("MEMDYN_TRACEBACK", "1")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        _train_ending_with(FloatingPointError(NAN), monkeypatch, capsys)


def test_the_training_guide_lists_every_exit_status():
    with open(os.path.join(REPO, "docs", "guides", "training.md")) as f:
        guide = f.read()
    section = guide.split("\n## Exit status\n", 1)[1].split("\n## ", 1)[0]
    assert [int(s) for s in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)] == sorted(main.EXIT_STATUSES)
