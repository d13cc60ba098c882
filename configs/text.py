"""Bring your own corpus: local text files (a directory, files or glob patterns) with a SentencePiece vocabulary
trained on them offline, parts of speech from spaCy when the `tags` extra is installed.

    memdyn train --config=configs/text.py:/path/to/corpus --workdir=runs/mytext \
        [--config.data.text.format=lines|files|jsonl] [--config.data.vocab.size=8000] \
        [--config.data.tags=spacy] [--config.data.sentence_split=True] [--config.data.doc_ids=prefix|control]

The argument is a directory, file or glob pattern (more with --config.data.text.paths='("a/*.txt","b")').
Held-out sets come from --config.data.text.validation_paths, or else the last data.validation_docs documents.
"""

from memdyn.configs import base


def get_config(paths: str | None = None):
    c = base.get_config()
    c.data.source = "text"
    c.data.text.paths = (paths,) if paths else ()
    c.data.text.format = "lines"
    c.data.vocab.model_type = "unigram"
    c.data.vocab.size = 8000
    c.data.sentence_split = True  # as Tirumala et al.: examples end at sentence boundaries
    return c
