"""The run-directory layer and every study's analysis import no JAX, TensorFlow or clu: finished runs can be read
and analysed where none of them is installed or initialised."""

import subprocess
import sys

from conftest import REPO


def test_rundir_and_analyses_import_without_jax():
    code = (
        "import sys\n"
        "import memdyn.rundir.export, memdyn.rundir.plots, memdyn.rundir.records, memdyn.rundir.runs\n"
        "from memdyn import studies\n"
        "names = sorted(studies.analyses())\n"
        "heavy = sorted(m for m in ('jax', 'tensorflow', 'clu', 'flax', 'seqio') if m in sys.modules)\n"
        "print(len(names), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    count, heavy = out.split(" ", 1)
    assert int(count) == 7, out
    assert heavy.strip() == "[]", f"importing the run-dir layer and the analyses loaded {heavy.strip()}"
