"""SentencePiece vocabularies, trained offline on a source's training text and used through seqio.

Every vocabulary memdyn trains has the same special ids, so stores built on any of them share one convention:
  0 <pad>, 1 </s> (end of document), 2 <unk>, 3 <mask> (masked-LM input), then the learned pieces.
Model types: ``unigram`` and ``bpe`` for real text; ``word`` splits at whitespace only, so one word is one token
(the synthetic corpus, whose parts of speech are tagged per word). A word vocabulary keeps every word it saw.

Enlargement (Tirumala et al., unique identifiers): ``extra_ids=K`` appends K ids after the learned pieces
(seqio's extra ids). They are either the per-document identifier tokens, or, in the control, left unused.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable

import seqio
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
MASK_PIECE = "<mask>"
MODEL_TYPES = ("unigram", "bpe", "word")
# Words of the unique-identifier prefix "document ID <id>"; a word vocabulary always holds them as whole tokens.
DOC_ID_WORDS = ("document", "ID")


def train_vocabulary(texts: Iterable[str], path: str, *, model_type: str, vocab_size: int | None,
                     max_sentence_length: int = 1 << 16) -> str:
    """Trains a SentencePiece model on ``texts`` (one document each) and writes it atomically to ``path``.

    ``vocab_size``: pieces in all, specials included; for ``word`` None keeps every word seen.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.data.vocab.model_type={model_type!r}: expected one of {MODEL_TYPES}")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"no text to train the vocabulary {path!r} on")
    symbols = [MASK_PIECE]
    if model_type == "word":
        texts.append(" ".join(DOC_ID_WORDS))  # so that the identifier prefix is two words of the vocabulary
        words = {w for t in texts for w in t.split()}
        # Specials, <mask> and every distinct word: the trainer keeps them all (use_all_vocab).
        vocab_size = vocab_size or (3 + len(symbols) + len(words))
    elif not vocab_size:
        raise ValueError(f"config.data.vocab.size must be set for model_type={model_type!r}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, model_type=model_type, vocab_size=vocab_size,
            pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, user_defined_symbols=symbols,
            hard_vocab_limit=False, use_all_vocab=model_type == "word", character_coverage=1.0,
            normalization_rule_name="identity", max_sentence_length=max_sentence_length,
            num_threads=1, minloglevel=2)  # one thread: the same text gives the same model
    except RuntimeError as e:
        raise ValueError(f"training the SentencePiece vocabulary {path!r} failed: {e}") from e
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)), delete=False) as f:
        f.write(model.getvalue())
    os.replace(f.name, path)
    return path


def load_vocabulary(path: str, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """The seqio vocabulary of a SentencePiece model file, enlarged by ``extra_ids`` ids at its end."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SentencePiece model {path!r} does not exist (config.data.vocab.path)")
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    try:
        vocabulary.tokenizer  # parses the model now, so a bad file fails here and not mid-pipeline
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
