"""Vocabularies: memdyn's one special-id convention, SentencePiece vocabularies, the synthetic corpus's word list,
and decoding ids back to text.

Special ids, the same for every source memdyn builds (the synthetic corpus and every SentencePiece vocabulary):
  0 pad, 1 end of document (EOS), 2 unknown, 3 <mask> (masked-LM input), then the words or learned pieces.
A user's seqio Task keeps its own vocabulary; its stores' manifests record its pad, EOS, unknown and mask ids
(mask None when it has no ``<mask>`` piece: such a run can train causal LMs only).

SentencePiece vocabularies are trained offline on a source's training text and used through seqio. Model types:
``unigram`` and ``bpe`` for real text; ``word`` splits at whitespace only, so one word is one token
(the synthetic corpus, whose parts of speech are tagged per word). ``config.data.vocab.size`` is the exact number
of ids a trained vocabulary has, specials included; a size the training text cannot fill is refused with the
largest it can. A word vocabulary of size None keeps every word it saw; of size n, the most frequent words that
fit (the rest read as unknown).

Enlargement (Tirumala et al., unique identifiers): ``extra_ids=K`` appends K ids after the learned pieces
(seqio's extra ids). They are either the per-document identifier tokens, or, in the control, left unused.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

from memdyn.rundir import runs

if TYPE_CHECKING:
    import seqio

PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3
NUM_SPECIAL = 4  # ids below this are never drawn as masked-LM random replacements or canary tokens
SPECIAL_IDS = {"pad_id": PAD_ID, "eos_id": EOS_ID, "unk_id": UNK_ID, "mask_id": MASK_ID}
MASK_PIECE = "<mask>"
SENTENCE_END_CHARS = ".!?"
MODEL_TYPES = ("unigram", "bpe", "word")
# Words of the unique-identifier prefix "document ID <id>"; a word vocabulary always holds them as whole tokens.
DOC_ID_WORDS = ("document", "ID")


def train_vocabulary(
    texts: Iterable[str], path: str, *, model_type: str, vocab_size: int | None, max_sentence_length: int = 1 << 16
) -> str:
    """Trains a SentencePiece model on ``texts`` (one document each) and writes it atomically to ``path``.

    ``vocab_size``: ids in all, specials included, exactly; for ``word`` None keeps every word seen.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.data.vocab.model_type={model_type!r}: expected one of {MODEL_TYPES}")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"no text to train the vocabulary {path!r} on")
    num_docs = len(texts)
    symbols = [MASK_PIECE]
    keep_all = model_type == "word" and vocab_size is None
    if model_type == "word":
        texts.append(" ".join(DOC_ID_WORDS))  # so that the identifier prefix is two words of the vocabulary
        if keep_all:  # specials, <mask> and every distinct word: the trainer keeps them all (use_all_vocab)
            vocab_size = 3 + len(symbols) + len({w for t in texts for w in t.split()})
    elif not vocab_size:
        raise ValueError(f"config.data.vocab.size must be set for model_type={model_type!r}")
    model = io.BytesIO()
    try:
        # hard_vocab_limit: the vocabulary has exactly vocab_size ids, or training fails and says how many fit.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            user_defined_symbols=symbols,
            hard_vocab_limit=not keep_all,
            use_all_vocab=keep_all,
            character_coverage=1.0,
            normalization_rule_name="identity",
            max_sentence_length=max_sentence_length,
            num_threads=1,
            minloglevel=2,
        )  # one thread: the same text gives the same model
    except RuntimeError as e:
        most = re.search(r"Vocabulary size too high .*<= (\d+)", str(e))
        if most:
            raise ValueError(
                f"config.data.vocab.size={vocab_size}: the {num_docs} documents it is trained on "
                f"support a {model_type} vocabulary of at most {most.group(1)} ids; set "
                f"--config.data.vocab.size={most.group(1)} or less"
            ) from None
        raise ValueError(f"training the SentencePiece vocabulary {path!r} failed: {e}") from e

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(model.getvalue())

    return runs.atomic_write(path, write)


def load_vocabulary(path: str, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """The seqio vocabulary of a SentencePiece model file, enlarged by ``extra_ids`` ids at its end."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SentencePiece model {path!r} does not exist (config.data.vocab.path)")
    import seqio  # imports TensorFlow: only where a SentencePiece vocabulary is used

    import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)

    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    try:
        vocabulary.tokenizer  # noqa: B018 (parses the model now, so a bad file fails here and not mid-pipeline)
    except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError
        raise ValueError(f"{path!r} is not a SentencePiece model: {e}") from e
    return vocabulary


def pieces(vocabulary: seqio.SentencePieceVocabulary) -> tuple[str, ...]:
    """Text of every id [vocab_size]; extra ids read ``<extra_id_k>`` (k counted from the end, as seqio does)."""
    sp = vocabulary.tokenizer
    base = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    extra = [f"<extra_id_{vocabulary.vocab_size - 1 - i}>" for i in range(len(base), vocabulary.vocab_size)]
    return tuple(base + extra)


def mask_id(vocabulary: seqio.Vocabulary) -> int | None:
    """Id of the ``<mask>`` piece, if the vocabulary has one."""
    sp = getattr(vocabulary, "tokenizer", None)
    if sp is None:
        return None
    piece_id = sp.piece_to_id(MASK_PIECE)
    return None if piece_id == sp.unk_id() else int(piece_id)


def sentence_end_ids(vocabulary: seqio.Vocabulary) -> np.ndarray:
    """bool [V]: ids whose piece ends a sentence (ends in . ! ?), and EOS."""
    is_end = np.zeros(vocabulary.vocab_size, bool)
    for i, piece in enumerate(pieces(vocabulary)):
        is_end[i] = piece.rstrip() != "" and piece.rstrip()[-1] in SENTENCE_END_CHARS
    is_end[vocabulary.eos_id] = True
    return is_end


def write_words(path: str, words: tuple[str, ...]) -> None:
    """A word-list vocabulary (the synthetic corpus's): one word per line, the id is the line number."""
    runs.atomic_write_text(path, "\n".join(words) + "\n")


def read_words(path: str) -> tuple[str, ...]:
    with open(path) as f:
        return tuple(line.rstrip("\n") for line in f)


@functools.lru_cache(maxsize=4)
def _sentencepiece(path: str) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=path)


def decode(
    ids: Iterable[int],
    *,
    words: tuple[str, ...] | None = None,
    sentencepiece: str | None = None,
    vocabulary: seqio.Vocabulary | None = None,
) -> str:
    """Text of token ids (padding already dropped) from whichever vocabulary a run has: a seqio vocabulary, a
    SentencePiece model file, a word list, or none (the ids themselves)."""
    ids = [int(i) for i in ids]
    if vocabulary is not None:
        return vocabulary.decode(ids)
    if sentencepiece is not None:
        sp = _sentencepiece(sentencepiece)
        base = sp.get_piece_size()  # ids past it are extra ids (document identifiers), which have no text
        if all(i < base for i in ids):
            return sp.decode(ids)
        return " ".join(sp.decode([i]) if i < base else f"<id_{i - base}>" for i in ids)
    if words is None:
        return " ".join(str(i) for i in ids)
    return " ".join(words[i] for i in ids)
