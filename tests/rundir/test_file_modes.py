"""Files memdyn writes atomically (through a temporary file, which ``tempfile`` makes 0600) end up with the mode a
plain ``open()`` gives under the user's umask, as the CSVs written directly do; so do the example stores' directories
(``tempfile.mkdtemp`` makes them 0700)."""

import os
import stat

import numpy as np
import pytest

from memdyn.data.store import write_store
from memdyn.rundir import runs


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Sets the process's umask for the test and puts the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert runs.umask() == mask and runs.plain_mode() == file_mode and runs.plain_mode(directory=True) == dir_mode
    runs.atomic_write_text(str(tmp_path / "config.json"), "{}\n")
    runs.atomic_write(str(tmp_path / "train.png"), lambda tmp: open(tmp, "wb").write(b"png"))  # opens tmp again

    def anew(tmp):  # a writer that replaces the temporary file rather than writing into it
        os.remove(tmp)
        with open(tmp, "w") as f:
            f.write("a\n")

    runs.atomic_write(str(tmp_path / "part.csv"), anew)
    (tmp_path / "plain.csv").write_text("a\n")
    store = write_store(str(tmp_path / "store"), tokens=np.ones((2, 4), np.int32), example_ids=[0, 1], doc_ids=[0, 1])
    files = ["config.json", "train.png", "part.csv", "plain.csv", "store/manifest.json", "store/tokens.npy"]
    assert {name: oct(_mode(tmp_path / name)) for name in files} == {name: oct(file_mode) for name in files}
    assert _mode(store.path) == dir_mode
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary file left


def test_the_umask_is_read_without_proc_too(monkeypatch, umask):
    """Where /proc/self/status is missing the umask is set and put back at once: the same answer, no change."""
    umask(0o027)

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(runs, "open", no_proc, raising=False)
    assert runs.umask() == 0o027
    assert os.umask(0o027) == 0o027  # left as it was
