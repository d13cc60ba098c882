"""Importing memdyn changes no global state: the environment (os.environ) and Flax's settings (every option of
``flax.config`` and the current value of every Flax config context, such as ``nnx.use_eager_sharding``) are the
same after importing ``memdyn.cli``, each command module and then every module of the package (the configs and
launchers it ships included) as before. What must happen before TensorFlow is imported, its log level, is the
``memdyn`` entry point's (``memdyn.cli.main.run``), not an import's. Each check runs in a fresh interpreter."""

import json

import pytest

from conftest import run_python

# Imports PRELOAD (failures ignored), then MODULES ("<package>.*": the package and every module under it), and
# prints {"changed": {what: [before, after]}, "skipped": {module: why}, "imported": [other modules it imported]}.
_SNAPSHOT = r"""
import importlib, json, os, pkgutil, sys

for name in PRELOAD:
    try:
        importlib.import_module(name)
    except Exception:
        pass

import flax.typing

configurations = importlib.import_module("flax.configurations")  # flax's __init__ deletes the attribute


def contexts(cls=flax.typing.BaseConfigContext):
    out = {}
    for sub in cls.__subclasses__():
        out[f"{sub.__module__}.{sub.__qualname__}"] = repr(sub.current_value())
        out.update(contexts(sub))
    return out


def state():
    holders = [h for h in vars(configurations).values() if isinstance(h, configurations.FlagHolder)]
    flax_config = {h.name: repr(h.value) for h in holders}
    return {"environ": dict(os.environ), "flax.config": flax_config, "flax contexts": contexts()}


def walk(package):
    yield package
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        yield info.name


before, loaded = state(), set(sys.modules)
skipped = {}
for name in MODULES:
    names = walk(name[:-2]) if name.endswith(".*") else [name]
    for module in names:
        if module == "memdyn.__main__":  # runs the command line
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # an optional dependency this environment lacks
            if e.name.split(".")[0] == "memdyn":
                raise
            skipped[module] = str(e)
after = state()
changed = {
    f"{part}: {key}": [before[part].get(key), after[part].get(key)]
    for part in before
    for key in sorted(set(before[part]) | set(after[part]))
    if before[part].get(key) != after[part].get(key)
}
imported = [m for m in sys.modules if m not in loaded and m.split(".")[0] != "memdyn"]
print(json.dumps({"changed": changed, "skipped": skipped, "imported": imported}))
"""


def _imports_change(modules: list[str], preload: str | None = None) -> dict:
    """``preload``: a JSON file of the module names to import first."""
    code = f"MODULES = {modules!r}\nPRELOAD = json.load(open({preload!r})) if {preload!r} else []\n"
    proc = run_python("import json\n" + code + _SNAPSHOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_command_line_changes_no_global_state():
    from memdyn.cli import main

    modules = ["memdyn.cli", "memdyn.cli.main", *(f"memdyn.cli.{m}" for m in main.MODULES), "memdyn.cli.reference"]
    result = _imports_change(modules)
    assert result["changed"] == {} and result["skipped"] == {}


@pytest.mark.slow
def test_importing_every_memdyn_module_changes_no_global_state(tmp_path):
    """TensorFlow and others set environment variables as they are imported (TF2_BEHAVIOR, ...): the libraries
    memdyn's modules import are imported first, so that only memdyn's own import-time code is measured."""
    modules = ["memdyn.cli", "memdyn.*", "memdyn.configs.*", "memdyn.launch.*"]
    libraries = tmp_path / "libraries.json"
    libraries.write_text(json.dumps(_imports_change(modules)["imported"]))
    result = _imports_change(modules, preload=str(libraries))
    assert result["changed"] == {}, result["changed"]
