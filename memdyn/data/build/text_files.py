"""Local text corpora: plain-text or JSON-lines files, read through seqio's file data sources.

Formats (config.data.text.format):
  lines  one document per non-blank line of every file
  files  one document per file (its whole text)
  jsonl  one JSON object per non-blank line; the document is its ``config.data.text.field`` string
Files come from glob patterns or directories (every non-hidden file below, recursively), in sorted order, which
fixes the document order and so the document ids (0, 1, ... in that order).

Everything is checked in Python before any compute (``read_documents``): a pattern that matches nothing, an empty
file, bytes that are not UTF-8, a JSON line that does not parse or lacks the field, a document shorter than the
minimum: each raises an error naming the file (and line).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os

import numpy as np
import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
import seqio
import tensorflow as tf

from memdyn.data.build.mapped_source import MappedSource

FORMATS = ("lines", "files", "jsonl")


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    where: str  # "path" or "path:line", for error messages


def list_files(patterns: tuple[str, ...] | list[str], flag: str = "config.data.text.paths") -> list[str]:
    """Files named by glob patterns or directories, sorted and deduplicated."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError(f"{flag} is empty: name text files, directories or glob patterns")
    files = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(root, name) for root, dirs, names in os.walk(pattern) for name in names
                     if not name.startswith(".") and not any(p.startswith(".") for p in
                                                             os.path.relpath(root, pattern).split(os.sep)[1:])]
        else:
            found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(f"{flag}: {pattern!r} matches no file")
        files.update(os.path.abspath(p) for p in found)
    return sorted(files)


def read_documents(files: list[str], fmt: str, field: str = "text", min_words: int = 1) -> list[Document]:
    """The documents of ``files`` in order, every file checked (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"config.data.text.format={fmt!r}: expected one of {FORMATS}")
    documents = []
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        if not raw.strip():
            raise ValueError(f"text file {path!r} is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ValueError(f"text file {path!r} is not UTF-8: invalid byte {raw[e.start]:#04x} at line {line} "
                             f"(byte offset {e.start})") from None
        if fmt == "files":
            documents.append(Document(text.strip(), path))
            continue
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            if fmt == "jsonl":
                line = _json_field(line, field, where)
            documents.append(Document(line.strip(), where))
    for doc in documents:
        if len(doc.text.split()) < min_words:
            raise ValueError(f"document at {doc.where} has {len(doc.text.split())} words, fewer than "
                             f"config.data.text.min_words={min_words}")
    return documents


def _json_field(line: str, field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ValueError(f"{where}: no string field {field!r} (config.data.text.field)")
    return record[field]


def data_source(split_files: dict[str, list[str]], fmt: str, field: str = "text") -> seqio.DataSource:
    """A seqio file data source yielding {"text": document} in ``read_documents`` order, per split.

    Files are read one after another (cycle_length 1), so the order is the sorted file order. Blank lines are
    dropped by memdyn.data.tasks.document_source, which wraps this source, as ``read_documents`` drops them.
    """
    if fmt == "files":
        def read_file(path):
            return tf.data.Dataset.from_tensors(tf.strings.strip(tf.io.read_file(path)))
        return seqio.FileDataSource(read_file, split_files, cycle_length=1, caching_permitted=False)
    source = seqio.TextLineDataSource(split_files, cycle_length=1, caching_permitted=False)
    if fmt == "jsonl":
        return MappedSource(source, functools.partial(_json_lines, field=field))
    return source


def _json_lines(lines: tf.data.Dataset, split: str, field: str) -> tf.data.Dataset:
    """The ``field`` string of each non-blank line, parsed as a JSON object."""
    del split
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)

    def parse(line: np.ndarray) -> bytes:
        return json.loads(line.decode("utf-8"))[field].strip().encode("utf-8")

    return lines.map(lambda line: tf.ensure_shape(tf.numpy_function(parse, [line], tf.string), []))
