"""docs/reference/outputs.md describes every column the code writes, and names no column the code no longer writes.

Real runs at nano scale, made through the public entry points (``memdyn.train.job.train``, ``memdyn eval``'s and
``memdyn extract``'s functions, ``memdyn export``'s, and every ``memdyn analyze`` through its registry), write their
files; each file's columns (CSV header, Parquet schema, JSON keys, TensorBoard tags, a directory's entries) must
all be in the reference's table for it, and every name of a table must be written by at least one of these files,
except the few that need runs too costly for a test (``NOT_WRITTEN_HERE`` and ``FILES_NOT_WRITTEN_HERE``, each with
its reason). The page's format is described at its top and parsed here (``parse_reference``); the parse itself is
a fast test.
"""

import json
import os
import re
import shutil

import pandas as pd
import pytest

from conftest import REPO, tiny_config
from memdyn.sweeps.local import compilation_cache_in

REFERENCE = os.path.join(REPO, "docs", "reference", "outputs.md")
TAUS = (0.5, 0.9)  # passed to the analyses: `<tau>` in a column name stands for each of them

# Names of the reference that no file made here holds, and why (checked to be documented, so the list stays true).
NOT_WRITTEN_HERE = {
    "<workdir>/": {"deletion.csv": "launch/memsinks.py's per-id deletion (eight checkpoint evaluations)"},
    "data/": {
        "vocab.model": "tfds and text sources (a SentencePiece vocabulary)",
        "tfds/": "the tfds source's memdyn_synthetic build",
    },
    "data/<set>/": {"seq_ids.npy": "stores of packed rows (config.data.source=store)"},
    "data/<set>/manifest.json": {
        name: "tfds, text and seqio sources"
        for name in ("task", "vocab_file", "vocab_sha256", "extra_ids", "num_docs", "id_prefix_len")
    },
    "tensorboard/": {
        "steps_per_sec": "clu's ReportProgress, every 5 s of a run (a nano run may end first)",
        "uptime": "clu's ReportProgress, every 5 s of a run (a nano run may end first)",
    },
    "forgetting_trend.csv": {
        name: "single-insertion runs of two or more sizes"
        for name in (
            "insert_step",
            "measure",
            "num_runs",
            "sizes",
            "slope_per_decade",
            "slope_ci_low",
            "slope_ci_high",
            "p_value",
        )
    },
    "predict_equicompute.csv": {
        f"{family}{suffix}": "a target that memorizes some sequence (nano runs of a few steps memorize none), and "
        "smaller models of its seed"
        for family in ("target_checkpoint", "smaller_final", "smaller_intermediate")
        for suffix in ("", "_recall", "_precision", "_compute_fraction")
    },
}
# Files of the reference that no run here writes, and why.
FILES_NOT_WRITTEN_HERE = {
    "<identity>": "not a file: the identity columns the result CSVs include (checked through them)",
    "deletion.csv": "launch/memsinks.py (a hand-written one feeds memsinks_deletion.csv here)",
    "<out>.parts/": "only while `memdyn extract` runs",
    "<out>.parts/job.json": "only while `memdyn extract` runs (its keys are checked through <out>.json)",
    "<sweep dir>/": "memdyn sweep",
    "sweep.json": "memdyn sweep",
}


# -- the reference ---------------------------------------------------------------------------------------------------
HEADING = re.compile(r"### `([^`]+)`\s*$")
NAMES = re.compile(r"`[^`]+`(?:, `[^`]+`)*")
INCLUDE = re.compile(r"all of `([^`]+)`")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def parse_reference(text: str) -> dict[str, dict]:
    """{heading key: {"names": [...], "includes": [...], "table": bool}} (see the top of outputs.md)."""
    entries, current, rows = {}, None, 0
    for number, line in enumerate(text.splitlines(), 1):
        heading = HEADING.fullmatch(line)
        if heading:
            key = heading.group(1)
            assert key not in entries, f"outputs.md:{number}: a second heading `{key}`"
            current, rows = {"names": [], "includes": [], "table": False, "closed": False}, 0
            entries[key] = current
        elif line.startswith("#"):
            current = None
        elif current is not None and not current["closed"] and line.startswith("|"):
            rows += 1
            cells = _cells(line)
            if rows == 1:
                assert cells[0] in ("Column", "Key", "Entry", "Tag"), f"outputs.md:{number}: header {cells[0]!r}"
                current["table"] = True
                continue
            if rows == 2:
                continue  # |---|---|
            include = INCLUDE.fullmatch(cells[0])
            if include:
                current["includes"].append(include.group(1))
                continue
            assert NAMES.fullmatch(cells[0]), (
                f"outputs.md:{number}: a row's first cell is `name`, `name`, ... or all of `heading`: {cells[0]!r}"
            )
            current["names"] += re.findall(r"`([^`]+)`", cells[0])
        elif current is not None and current["table"] and not line.startswith("|"):
            current["closed"] = True  # only the first table after a heading lists names
    return entries


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE) as f:
        return parse_reference(f.read())


def names_of(reference, key: str, **values) -> set[str]:
    """The names documented for ``key``, includes resolved, each ``<placeholder>`` expanded to ``values``."""
    entry = reference[key]
    names = list(entry["names"])
    for other in entry["includes"]:
        names += sorted(names_of(reference, other, **values))
    out = set()
    for name in names:
        expanded = [name]
        for placeholder in re.findall(r"<([a-z_]+)>", name):
            assert placeholder in values, f"`{name}` of `{key}`: no values for <{placeholder}>"
            expanded = [e.replace(f"<{placeholder}>", str(v)) for e in expanded for v in values[placeholder]]
        out.update(expanded)
    return out


# -- what the code writes --------------------------------------------------------------------------------------------
def _csv_columns(path: str) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        return []


def _parquet_columns(paths: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return list(dict.fromkeys(n for p in paths for n in pq.read_schema(p).names))


def _tags(directory: str) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = set()
    for name in os.listdir(directory):
        for event in EventFileLoader(os.path.join(directory, name)).Load():
            tags.update(value.tag for value in event.summary.value)
    return tags


def _entries(directory: str) -> set[str]:
    return {
        name + ("/" if os.path.isdir(os.path.join(directory, name)) else "")
        for name in os.listdir(directory)
        if not name.startswith(".")
    }


def _leaves(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in node.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return out


class Observed:
    """What the files hold, by reference heading: a list of (file, names, placeholder values)."""

    def __init__(self):
        self.files: dict[str, list[tuple[str, set[str], dict]]] = {}

    def add(self, key: str, path: str, names, **values) -> None:
        self.files.setdefault(key, []).append((path, set(names), values))


def _run_files(observed: Observed, workdir: str) -> None:
    """Every file of a run directory, by heading."""
    observed.add("<workdir>/", workdir, _entries(workdir))
    for name in ("train.csv", "eval.csv", "insertions.csv", "pos.csv"):
        if os.path.exists(os.path.join(workdir, name)):
            observed.add(name, os.path.join(workdir, name), _csv_columns(os.path.join(workdir, name)))
    for name in ("examples", "eval_examples"):
        directory = os.path.join(workdir, name)
        parts = [os.path.join(directory, p) for p in sorted(os.listdir(directory))]
        if parts:
            observed.add(name + "/", directory, _parquet_columns(parts))
    evals = pd.read_csv(os.path.join(workdir, "eval.csv"))
    observed.add("tensorboard/", workdir, _tags(os.path.join(workdir, "tensorboard")), set=sorted(set(evals["set"])))
    data = os.path.join(workdir, "data")
    observed.add("data/", data, _entries(data))
    observed.add("data/membership.csv", data, _csv_columns(os.path.join(data, "membership.csv")))
    for store in os.listdir(data):
        if os.path.isfile(os.path.join(data, store, "manifest.json")):
            observed.add("data/<set>/", os.path.join(data, store), _entries(os.path.join(data, store)))
            with open(os.path.join(data, store, "manifest.json")) as f:
                observed.add("data/<set>/manifest.json", os.path.join(data, store, "manifest.json"), json.load(f))
    checkpoints = os.path.join(workdir, "checkpoints")
    for step in os.listdir(checkpoints):
        path = os.path.join(checkpoints, step, "meta", "metadata")
        with open(path) as f:
            meta = json.load(f)
        names = {k for k in meta if k != "counters"} | {f"counters.{k}" for k in meta["counters"]}
        observed.add("checkpoints/<step>/meta/metadata", path, names)
    evals_dir = os.path.join(workdir, "evals")
    for name in os.listdir(evals_dir) if os.path.isdir(evals_dir) else []:
        key = "evals/<set>-<step>-extract.csv" if name.endswith("-extract.csv") else "evals/<set>-<step>.csv"
        observed.add(key, os.path.join(evals_dir, name), _csv_columns(os.path.join(evals_dir, name)))
    if os.path.isdir(evals_dir):
        observed.add("evals/", evals_dir, [])
    observed.add("checkpoints/", checkpoints, [])


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """Runs, evaluations, extractions, exports and analyses at nano scale: what their files hold."""
    from memdyn import studies
    from memdyn.extraction import eval_checkpoint, extract_job
    from memdyn.rundir import export
    from memdyn.train import job

    root = tmp_path_factory.mktemp("outputs")
    runs_dir = root / "runs"
    # A default run (eval.pos is on in configs/base.py and the synthetic corpus is tagged: pos.csv) on data with
    # planted canaries and repeated sequences, evaluating the sets of configs/memsinks.py: also the standard
    # condition of `analyze memsinks`. Its name is a sweep-style name, so an export of the directory has a swept
    # field's column.
    default = str(runs_dir / "optimizer.lr=0.001,seed=0")
    data = {
        "data.tracked.canaries": 2,
        "data.tracked.canary_length": 8,
        "data.tracked.canary_repeats": 2,
        "data.tracked.duplicated_docs": 3,
        "data.tracked.duplicate_count": 6,
        "model.mlp": "swiglu",
        "eval.sets": ("validation", "duplicates", "control"),
    }
    forks = {name: str(runs_dir / name) for name in ("insert", "sham")}
    memsinks = str(runs_dir / "memsinks")
    with compilation_cache_in(str(root / "compile_cache")):  # the forks run the default run's programs
        job.train(tiny_config(num_steps=8, **data), default)
        # An insertion fork and its sham control, from checkpoint 4
        for name, sham in (("insert", False), ("sham", True)):
            insert = {"insert.at_step": 5, "insert.sham": sham}
            job.train(tiny_config(num_steps=8, init_from=f"{default}@4", **data, **insert), forks[name])
        # MemSinks on the same data, evaluated with the sinks dropped and at p_mem too
        modes = {"memsinks.method": "sinks", "eval.memsinks_modes": ("dropout", "all")}
        job.train(tiny_config(num_steps=4, **data, **modes), memsinks)

    # memdyn eval --extract; memdyn extract of two checkpoints (CSV, the files `analyze predict` reads) and Parquet
    eval_checkpoint.evaluate_checkpoint(default, "train", extract_k=True, prompt_len=8, num_new=8)
    eval_checkpoint.evaluate_checkpoint(memsinks, "duplicates", memsinks_mode="dropout")
    for step in (4, 8):
        extract_job.run_extract(default, step, set_name="train", score=True, prompt_len=8, num_new=8)
    parquet = str(root / "validation.parquet")
    extract_job.run_extract(default, 8, out=parquet, set_name="validation", prompt_len=8, num_new=8)

    # memdyn export of a run and of the directory of runs
    export.export_run(forks["insert"], str(root / "export_run"))
    export.export_sweep(str(runs_dir), str(root / "export_sweep"))

    observed = Observed()
    for workdir in (default, *forks.values(), memsinks):
        _run_files(observed, workdir)
        with open(os.path.join(workdir, "config.json")) as f:
            observed.add("config.json", workdir, _leaves(json.load(f)))
        observed.add("train.png", workdir, [])
    extract_dir = os.path.join(default, "extract")
    for name in sorted(os.listdir(extract_dir)):
        path = os.path.join(extract_dir, name)
        if name.endswith(".json"):
            with open(path) as f:
                observed.add("<out>.json", path, json.load(f))
        else:
            observed.add("<out>", path, _csv_columns(path))
    observed.add("<out>", parquet, _parquet_columns([parquet]))
    for directory, fields in (("export_run", []), ("export_sweep", ["optimizer.lr", "seed"])):
        for name in os.listdir(root / directory):
            path = str(root / directory / name)
            observed.add(f"<export>/{name}", path, _csv_columns(path), field=fields)

    # Every analysis through the registry `memdyn analyze` dispatches by name. The unique-identifier conditions are
    # the default run's files under the three configs (they need the tfds source, too slow here); the MemSinks run
    # gets a deletion.csv with the reference's columns (launch/memsinks.py's eight evaluations, too slow here).
    conditions = []
    for condition in ("none", "control", "prefix"):
        workdir = root / "unique_ids" / condition
        os.makedirs(workdir)
        for name in ("train.csv", "eval.csv"):
            shutil.copy(os.path.join(default, name), workdir / name)
        with open(os.path.join(default, "config.json")) as f:
            config = json.load(f)
        config["data"].update(doc_ids=condition, chunk_len=29)
        with open(workdir / "config.json", "w") as f:
            json.dump(config, f)
        if condition == "prefix":
            evals = pd.read_csv(workdir / "eval.csv")
            content = evals[evals["set"] == "train"].assign(set="train@content")
            pd.concat([evals, content]).to_csv(workdir / "eval.csv", index=False)
        conditions.append(str(workdir))
    with open(REFERENCE) as f:
        deletion_columns = sorted(names_of(parse_reference(f.read()), "deletion.csv"))
    pd.DataFrame(
        [{c: 0 if c in ("excluded_ids", "step") else "exclude" if c == "mode" else 0.5 for c in deletion_columns}]
    ).to_csv(os.path.join(memsinks, "deletion.csv"), index=False)
    analyses = {
        "memorization": [default],
        "learning_rate": [default],
        "pos": [default],
        "forgetting": [forks["insert"], forks["sham"]],
        "memsinks": [memsinks, default],
        "predict": [default],
        "unique_ids": conditions,
    }
    registry = studies.analyses()
    assert set(registry) == set(analyses), "a new analysis: add it to this test and to outputs.md"
    for name, workdirs in analyses.items():
        out = str(root / "analyze" / name)
        registry[name].run(studies.Options(workdirs, out, taus=TAUS, m_from="auto"))
        observed.add("<analyze out>/", out, _entries(out))
        for file in os.listdir(out):
            if file.endswith(".csv"):
                path = os.path.join(out, file)
                observed.add(file, path, _csv_columns(path), tau=[f"{t:g}" for t in TAUS])
    return observed


# -- the checks ------------------------------------------------------------------------------------------------------
def test_the_reference_parses_and_documents_every_analysis(reference):
    from memdyn import studies

    assert {"train.csv", "eval.csv", "insertions.csv", "pos.csv", "examples/", "eval_examples/"} <= set(reference)
    text = open(REFERENCE).read()
    for name in studies.analyses():
        assert f"## `memdyn analyze {name}`" in text, f"outputs.md has no section for `memdyn analyze {name}`"
    for key, names in NOT_WRITTEN_HERE.items():
        assert key in reference and set(names) <= {n for n in reference[key]["names"]}, key
    for key in FILES_NOT_WRITTEN_HERE:
        assert key in reference, key


@pytest.mark.slow
def test_every_name_written_is_documented(produced, reference):
    observed = produced
    problems = []
    for key, files in observed.files.items():
        if key not in reference:
            problems.append(f"{files[0][0]}: outputs.md has no heading `{key}`")
            continue
        if key == "config.json":  # every field of docs/reference/config.md, and the table's resolved fields
            continue
        for path, names, values in files:
            undocumented = names - names_of(reference, key, **values)
            if undocumented:
                problems.append(f"{path}: {sorted(undocumented)} not in outputs.md's `{key}`")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_documented_name_is_written(produced, reference):
    observed = produced
    problems = []
    for key, entry in reference.items():
        if key in FILES_NOT_WRITTEN_HERE:
            continue
        if key not in observed.files:
            problems.append(f"outputs.md documents `{key}`, which none of the test's runs wrote")
            continue
        if not entry["table"] or key == "config.json":
            continue
        written = set().union(*(names for _, names, _ in observed.files[key]))
        values = {}
        for _, _, v in observed.files[key]:
            for placeholder, items in v.items():
                values.setdefault(placeholder, set()).update(items)
        missing = names_of(reference, key, **values) - written - set(NOT_WRITTEN_HERE.get(key, {}))
        if missing:
            problems.append(f"outputs.md's `{key}` names {sorted(missing)}, which no file written here has")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_config_json_is_every_config_field_and_the_resolved_ones(produced, reference):
    from memdyn.configs import base

    observed = produced
    fields = _leaves(base.get_config().to_dict())
    resolved = names_of(reference, "config.json")
    for path, names, _ in observed.files["config.json"]:
        assert names - fields == resolved, path
        assert fields - names == set(), path
