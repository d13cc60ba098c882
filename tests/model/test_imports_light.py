"""The model, the training step and extraction import without TensorFlow, seqio or clu (only building data and
writing summaries need them: ``memdyn.data.build``, ``memdyn.train.writers``, ``memdyn.train.progress``), and
importing memdyn changes no global Flax setting."""

import json

from conftest import run_python

HEAVY = ("tensorflow", "seqio", "clu")


def test_model_step_and_extraction_import_without_tensorflow_seqio_or_clu():
    proc = run_python(
        "import json, sys\n"
        "import memdyn.model.transformer, memdyn.train.steps, memdyn.extraction.extractability\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_importing_memdyn_leaves_flax_config_alone():
    proc = run_python(
        "from flax import nnx\n"
        "before = nnx.using_eager_sharding()\n"
        "import memdyn.model.transformer, memdyn.train.steps, memdyn.extraction.extractability\n"
        "print(before, nnx.using_eager_sharding())\n",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.strip().splitlines()[-1].split()
    assert before == after
