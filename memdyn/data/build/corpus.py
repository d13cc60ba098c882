"""The embedded default corpus: synthetic English-like documents with gold per-token parts of speech.

Everything is generated with numpy from a seed, so a memorization study runs on a fresh machine with no downloads.

Vocabulary (a pure function of ``vocab_size``, independent of the corpus seed, so corpora drawn with different
seeds share one vocabulary): ids 0..3 are memdyn's special ids (memdyn.data.vocab: pad, EOS, unknown, mask),
then one contiguous block of words per part of speech in ``POS_TAGS`` order. Function words (DET, ADP, PRON, CONJ, PUNCT) are real English; numbers are number words and
digit strings; nouns, proper nouns, verbs, adjectives and adverbs are pronounceable pseudo-words built from
syllables. Within each class, words are drawn with Zipfian frequencies (p ∝ 1 / rank), so there are frequent and
rare words.

Text: every sentence follows one of a few templates of a small probabilistic grammar, so the syntax is learnable,
while the content words in it are random, so predicting them exactly needs memorization. A document is a run of
sentences ending with ``<eos>``; its length in tokens lies in [min_doc_tokens, max_doc_tokens]: it ends at the first
sentence boundary past a length drawn uniformly from that range (or the last boundary within it), and its last
sentence is cut only when no sentence boundary falls within the range.

Memorization knobs: ``num_duplicated_docs`` training documents appear ``duplicate_count`` times each (kind
"duplicate"), and ``num_canaries`` canaries, each ``canary_length`` uniformly random non-special tokens followed by
``<eos>``, appear ``canary_repeats`` times each (kind "canary"). A canary token is tagged with the part of speech of
the word drawn (not "NONE"), so every non-special token carries its word's tag and the tags are a function of the
token ids everywhere.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools

import numpy as np

from memdyn.data.vocab import EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, UNK_ID  # noqa: F401 (re-exported)

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>", "<mask>")  # the words of ids PAD_ID, EOS_ID, UNK_ID, MASK_ID

POS_TAGS: tuple[str, ...] = ("NONE", "NOUN", "PROPN", "NUM", "VERB", "ADJ", "ADV", "DET", "ADP", "PRON", "CONJ",
                             "PUNCT")
TAG_ID = {name: i for i, name in enumerate(POS_TAGS)}

# Closed classes, most frequent first (rank sets the Zipfian frequency). Each word belongs to exactly one class so
# the gold tag is a function of the word.
_CLOSED_WORDS = {
    "DET": ("the", "a", "this", "that", "some", "every", "no", "each", "its", "their", "his", "her", "my", "our",
            "these", "those"),
    "ADP": ("of", "in", "to", "for", "with", "on", "at", "from", "by", "about", "into", "over", "after", "under",
            "near", "without", "before", "through", "across", "behind"),
    "PRON": ("it", "he", "they", "she", "we", "you", "someone", "everyone", "nobody", "something"),
    "CONJ": ("and", "but", "or", "because", "while", "although", "yet", "so", "if", "unless"),
    "PUNCT": (".", ","),
}
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
# Share of the open-class words (beyond the minimum per class) given to each open class; NOUN takes the rounding.
_OPEN_SHARE = {"NOUN": 0.32, "PROPN": 0.12, "NUM": 0.10, "VERB": 0.22, "ADJ": 0.16, "ADV": 0.08}
_MIN_OPEN_WORDS = 8
MIN_VOCAB_SIZE = NUM_SPECIAL + sum(map(len, _CLOSED_WORDS.values())) + _MIN_OPEN_WORDS * len(_OPEN_SHARE)

_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "cr",
           "dr", "fl", "gr", "pl", "pr", "st", "tr", "sh", "ch", "th", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "oo", "ie")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "t", "nd", "st", "rk", "ng")
# Suffixes give each open class an English-looking shape; the model sees whole words, so this is cosmetic.
_SUFFIXES = {"NOUN": ("", "", "", "er", "ment", "tion", "ness"), "PROPN": ("", "", "a", "on", "ia"),
             "VERB": ("", "", "", "ate", "ize", "en"), "ADJ": ("ous", "ic", "al", "ive", "ful", "ish", ""),
             "ADV": ("ly",)}
_VOCAB_SEED = 0x6D656D  # fixed: the vocabulary does not depend on the corpus seed

# Sentence templates and their weights. "X?" is optional, "X*" repeats 0-2 times.
_TEMPLATES = (
    ("DET ADJ* NOUN VERB DET ADJ* NOUN ADP PROPN .", 3.0),
    ("PROPN VERB NUM NOUN ADP DET NOUN .", 2.0),
    ("PRON ADV? VERB DET ADJ* NOUN .", 2.0),
    ("DET NOUN ADP DET NOUN VERB ADV .", 2.0),
    ("PROPN CONJ PROPN VERB ADP NUM .", 1.0),
    ("ADP NUM , PROPN VERB DET ADJ* NOUN CONJ PRON VERB ADV .", 1.0),
    ("DET ADJ* NOUN VERB , CONJ PRON ADV? VERB ADP DET NOUN .", 1.0),
    ("NUM NOUN VERB ADP PROPN .", 1.0),
    ("PRON VERB ADV .", 1.0),
)
_OPTIONAL = (0.7, 0.3)  # P(absent), P(present)
_REPEATED = (0.55, 0.3, 0.15)  # P(0), P(1), P(2 copies)

# Rounds of drawing replacements for documents that repeat an earlier one before giving up.
_MAX_DRAW_ROUNDS = 8


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    vocab_size: int = 2048
    num_train_docs: int = 2000
    num_validation_docs: int = 200
    min_doc_tokens: int = 48
    max_doc_tokens: int = 160
    num_duplicated_docs: int = 0
    duplicate_count: int = 1
    num_canaries: int = 0
    canary_length: int = 32
    canary_repeats: int = 1
    seed: int = 0


# eq=False: the fields hold numpy arrays, whose == is elementwise, so generated __eq__/__hash__ would raise.
@dataclasses.dataclass(frozen=True, eq=False)
class Document:
    doc_id: int  # unique per distinct document; all copies of a duplicated doc / canary share the doc_id
    tokens: np.ndarray  # int32 [T], ends with EOS_ID; read-only
    tags: np.ndarray  # int8 [T], POS tag ids (index into POS_TAGS); read-only
    kind: str  # "normal" | "duplicate" | "canary"


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    vocab: tuple[str, ...]  # id -> word
    train: tuple[Document, ...]  # copies included, in a seeded shuffled order
    validation: tuple[Document, ...]

    @property
    def vocab_tags(self) -> np.ndarray:
        """POS tag id of every vocabulary id, int8 [V]."""
        return vocab_tags(len(self.vocab))

    def decode(self, token_ids) -> str:
        """Words of ``token_ids`` (any shape, flattened) joined by spaces, pads dropped."""
        return " ".join(self.vocab[i] for i in np.asarray(token_ids).reshape(-1).tolist() if i != PAD_ID)


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary


@dataclasses.dataclass(frozen=True, eq=False)
class _Vocab:
    words: tuple[str, ...]  # [V]
    tags: np.ndarray  # int8 [V]
    class_start: dict[int, int]  # tag id -> first vocab id of the class
    class_start_of_tag: np.ndarray  # the same as an array indexed by tag id, int32 [len(POS_TAGS)]
    class_probs: dict[int, np.ndarray]  # tag id -> Zipfian word probabilities within the class, float64 [size]


def _class_sizes(vocab_size: int) -> dict[str, int]:
    sizes = {name: len(words) for name, words in _CLOSED_WORDS.items()}
    spare = vocab_size - MIN_VOCAB_SIZE
    for name, share in _OPEN_SHARE.items():
        sizes[name] = _MIN_OPEN_WORDS + int(share * spare)
    sizes["NOUN"] += vocab_size - NUM_SPECIAL - sum(sizes.values())
    return sizes


def _numbers(n: int) -> list[str]:
    """Number words, then 0..100, then years, then larger integers: the first ``n`` of them."""
    years = range(1900, 2031)
    larger = (str(i) for i in itertools.count(101) if i not in years)
    stream = itertools.chain(_NUMBER_WORDS, map(str, range(101)), map(str, years), larger)
    return list(itertools.islice(stream, n))


def _pseudo_words(rng: np.random.Generator, n: int, suffixes: tuple[str, ...], taken: set[str]) -> list[str]:
    """``n`` distinct pronounceable pseudo-words of 1-3 syllables, none in ``taken`` (which is updated)."""
    words: list[str] = []
    while len(words) < n:
        m = 2 * (n - len(words)) + 16
        num_syllables = rng.choice(3, size=m, p=(0.4, 0.45, 0.15)) + 1
        parts = np.stack([rng.integers(len(_ONSETS), size=(m, 3)), rng.integers(len(_VOWELS), size=(m, 3)),
                          rng.integers(len(_CODAS), size=(m, 3))], axis=-1)  # [m, 3 syllables, 3 parts]
        suffix = rng.integers(len(suffixes), size=m)
        for k, parts_k, s in zip(num_syllables.tolist(), parts.tolist(), suffix.tolist()):
            word = "".join(_ONSETS[o] + _VOWELS[v] + _CODAS[c] for o, v, c in parts_k[:k]) + suffixes[s]
            if word not in taken and len(words) < n:
                taken.add(word)
                words.append(word)
    return words


@functools.lru_cache(maxsize=8)
def _vocab(vocab_size: int) -> _Vocab:
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"CorpusConfig.vocab_size={vocab_size} is too small for the word classes; it must be at "
                         f"least {MIN_VOCAB_SIZE}")
    sizes = _class_sizes(vocab_size)
    numbers = _numbers(sizes["NUM"])
    # Lowercase uniqueness across all classes, so a proper noun is never just a capitalised common word.
    taken = {w.lower() for ws in _CLOSED_WORDS.values() for w in ws} | set(numbers)
    rng = np.random.default_rng([_VOCAB_SEED, vocab_size])
    words, tags = list(SPECIAL_TOKENS), [TAG_ID["NONE"]] * NUM_SPECIAL
    class_start, class_probs = {}, {}
    for tag_id, name in enumerate(POS_TAGS[1:], start=1):
        if name in _CLOSED_WORDS:
            class_words = list(_CLOSED_WORDS[name])
        elif name == "NUM":
            class_words = numbers
        else:
            class_words = _pseudo_words(rng, sizes[name], _SUFFIXES[name], taken)
            if name == "PROPN":
                class_words = [w.capitalize() for w in class_words]
        class_start[tag_id] = len(words)
        probs = 1.0 / np.arange(1, len(class_words) + 1)
        class_probs[tag_id] = probs / probs.sum()
        words += class_words
        tags += [tag_id] * len(class_words)
    assert len(words) == vocab_size and len(set(words)) == vocab_size
    tag_array = np.asarray(tags, np.int8)
    tag_array.setflags(write=False)
    start_of_tag = np.zeros(len(POS_TAGS), np.int32)
    start_of_tag[list(class_start)] = list(class_start.values())
    return _Vocab(tuple(words), tag_array, class_start, start_of_tag, class_probs)


def vocabulary(vocab_size: int = 2048) -> tuple[str, ...]:
    """The words of the vocabulary of ``vocab_size`` ids, id -> word."""
    return _vocab(vocab_size).words


def vocab_tags(vocab_size: int = 2048) -> np.ndarray:
    """POS tag id of every vocabulary id, int8 [V] (read-only); special tokens are "NONE"."""
    return _vocab(vocab_size).tags


def word_tag(vocab_id, vocab_size: int = 2048):
    """POS tag id(s) of ``vocab_id`` (an int or an int array of any shape, same shape out, int8)."""
    return vocab_tags(vocab_size)[np.asarray(vocab_id)]


# ---------------------------------------------------------------------------------------------------------------
# Grammar


def _expand(template: str, weight: float) -> list[tuple[tuple[tuple[int, int], ...], float]]:
    """All slot sequences a template can produce, with their probabilities times ``weight``.

    A slot is (tag id, fixed): punctuation is a fixed word (its index within PUNCT), other slots are sampled (-1).
    """
    variants = [((), weight)]
    for slot in template.split():
        name = slot.rstrip("?*")
        punct = _CLOSED_WORDS["PUNCT"]
        item = (TAG_ID["PUNCT"], punct.index(name)) if name in punct else (TAG_ID[name], -1)
        choices = _OPTIONAL if slot.endswith("?") else _REPEATED if slot.endswith("*") else (0.0, 1.0)
        variants = [(seq + (item,) * count, p * q) for seq, p in variants for count, q in enumerate(choices) if q > 0]
    return variants


@functools.lru_cache(maxsize=1)
def _grammar() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expanded sentence variants, their slots laid end to end.

    Returns the tag of every slot int8 [S], its fixed word (index within its class, -1 = sampled) int8 [S], and the
    start [K], length [K] and probability [K] of each variant.
    """
    variants = [v for template, weight in _TEMPLATES for v in _expand(template, weight)]
    lengths = np.array([len(seq) for seq, _ in variants], np.int64)
    probs = np.array([p for _, p in variants])
    slots = np.array([item for seq, _ in variants for item in seq], np.int8)  # [S, 2]
    return slots[:, 0], slots[:, 1], np.cumsum(lengths) - lengths, lengths, probs / probs.sum()


# ---------------------------------------------------------------------------------------------------------------
# Documents

# A document before it gets its id and kind: (tokens int32 [T], tags int8 [T]).
_Draft = tuple[np.ndarray, np.ndarray]


def _natural_docs(rng: np.random.Generator, count: int, config: CorpusConfig) -> list[_Draft]:
    """``count`` grammatical documents, each ending with EOS, lengths within the configured range."""
    vocab = _vocab(config.vocab_size)
    slot_tags, slot_fixed, variant_start, variant_len, variant_probs = _grammar()
    doc_len = rng.integers(config.min_doc_tokens, config.max_doc_tokens + 1, size=count)

    # One stream of sentences, long enough for the worst case: a document uses at most
    # (max_doc_tokens - 1) / shortest-sentence + 1 sentences.
    per_doc = (config.max_doc_tokens - 1) // int(variant_len.min()) + 1
    variant = rng.choice(len(variant_len), size=count * per_doc + 2, p=variant_probs)
    sentence_start = np.concatenate([[0], np.cumsum(variant_len[variant])])  # stream offset of sentence i [n+1]

    # Cut the stream into documents of whole sentences: up to the first sentence boundary at or after the drawn
    # length if that stays within range, else the last boundary within range; only when no boundary falls within
    # the range is the last sentence cut at the drawn length. Sequential (each document starts where the previous
    # stopped), but only O(log n) per document. Lengths here count the tokens before the EOS.
    bounds, lo, hi = sentence_start.tolist(), config.min_doc_tokens - 1, config.max_doc_tokens - 1
    starts, lengths = [], []
    s = 0
    for target in (doc_len - 1).tolist():
        base = bounds[s]
        k = bisect.bisect_left(bounds, base + target, lo=s + 1)  # first boundary at or after target
        if bounds[k] - base > hi:
            k = bisect.bisect_right(bounds, base + hi, lo=s) - 1  # last boundary within range
        starts.append(base)
        if k > s and lo <= bounds[k] - base <= hi:
            lengths.append(bounds[k] - base)
            s = k
        else:
            lengths.append(target)
            s = bisect.bisect_right(bounds, base + target)  # the sentence after the one cut
    span_start, span_len = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)

    # Tags of the stream positions the documents use [N], then a word of that class for each.
    total = int(span_len.sum())
    position = np.repeat(span_start - (np.cumsum(span_len) - span_len), span_len) + np.arange(total)
    sentence = np.searchsorted(sentence_start, position, side="right") - 1
    slot = variant_start[variant[sentence]] + position - sentence_start[sentence]
    word_tags, fixed = slot_tags[slot], slot_fixed[slot]
    words = vocab.class_start_of_tag[word_tags] + fixed.astype(np.int32)  # right where the word is fixed
    for tag_id, probs in vocab.class_probs.items():
        at = np.flatnonzero((word_tags == tag_id) & (fixed < 0))
        words[at] = vocab.class_start[tag_id] + rng.choice(len(probs), size=len(at), p=probs)

    # Lay the documents out back to back with an EOS after each, then split.
    out_len = span_len + 1
    ends = np.cumsum(out_len)
    tokens, tags = np.full(int(ends[-1]), EOS_ID, np.int32), np.zeros(int(ends[-1]), np.int8)
    word_at = np.arange(total) + np.repeat(np.arange(count), span_len)  # shift by one per earlier EOS
    tokens[word_at], tags[word_at] = words, word_tags
    tokens.setflags(write=False)
    tags.setflags(write=False)
    spans = zip((ends - out_len).tolist(), ends.tolist())
    return [(tokens[a:b], tags[a:b]) for a, b in spans]


def _canaries(rng: np.random.Generator, count: int, config: CorpusConfig) -> list[_Draft]:
    """``count`` canaries: uniformly random non-special tokens [canary_length] then EOS, tagged by word class."""
    tokens = np.full((count, config.canary_length + 1), EOS_ID, np.int32)
    tokens[:, :-1] = rng.integers(NUM_SPECIAL, config.vocab_size, size=(count, config.canary_length))
    tags = vocab_tags(config.vocab_size)[tokens]
    tokens.setflags(write=False)
    tags.setflags(write=False)
    return list(zip(tokens, tags))


def _distinct(draw, count: int, seen: set[bytes], what: str) -> list[_Draft]:
    """``count`` documents from ``draw(k)`` whose tokens differ from each other and from ``seen`` (updated)."""
    out: list[_Draft] = []
    for _ in range(_MAX_DRAW_ROUNDS):
        for draft in draw(count - len(out)):
            key = draft[0].tobytes()
            if key not in seen:
                seen.add(key)
                out.append(draft)
        if len(out) == count:
            return out
    raise ValueError(f"could not draw {count} distinct {what}: too few possible documents; raise "
                     f"CorpusConfig.vocab_size, min_doc_tokens or canary_length")


# ---------------------------------------------------------------------------------------------------------------
# Corpus


def _validate(config: CorpusConfig) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"CorpusConfig.{field.name}={value!r} must be an integer")
    minimum = {"vocab_size": MIN_VOCAB_SIZE, "num_train_docs": 1, "num_validation_docs": 0, "min_doc_tokens": 2,
               "num_duplicated_docs": 0, "duplicate_count": 1, "num_canaries": 0, "canary_length": 1,
               "canary_repeats": 1, "seed": 0}
    for name, low in minimum.items():
        value = getattr(config, name)
        if value < low:
            why = " (too small for the word classes)" if name == "vocab_size" else ""
            raise ValueError(f"CorpusConfig.{name}={value} must be at least {low}{why}")
    if config.max_doc_tokens < config.min_doc_tokens:
        raise ValueError(f"CorpusConfig.max_doc_tokens={config.max_doc_tokens} is less than "
                         f"min_doc_tokens={config.min_doc_tokens}")
    if config.num_duplicated_docs > config.num_train_docs:
        raise ValueError(f"CorpusConfig.num_duplicated_docs={config.num_duplicated_docs} exceeds "
                         f"num_train_docs={config.num_train_docs}")


def generate(config: CorpusConfig = CorpusConfig()) -> Corpus:
    """The corpus of ``config``; the same config always gives the same corpus.

    Doc ids: training documents 0..num_train_docs-1, canaries next, validation documents last. Every document
    (normal, duplicated, canary, validation) has distinct tokens. ``num_duplicated_docs`` of the training
    documents, chosen at random, are the duplicated ones; all copies of a document are one (immutable) object.
    """
    _validate(config)
    vocab = _vocab(config.vocab_size)
    rng = np.random.default_rng([int(config.seed), 0x636F72])
    seen: set[bytes] = set()
    natural = _distinct(lambda k: _natural_docs(rng, k, config), config.num_train_docs + config.num_validation_docs,
                        seen, "documents")
    canaries = _distinct(lambda k: _canaries(rng, k, config), config.num_canaries, seen, "canaries")

    duplicated = set(rng.choice(config.num_train_docs, size=config.num_duplicated_docs, replace=False).tolist())
    train = []
    for doc_id, (tokens, tags) in enumerate(natural[:config.num_train_docs]):
        copies = config.duplicate_count if doc_id in duplicated else 1
        train += [Document(doc_id, tokens, tags, "duplicate" if doc_id in duplicated else "normal")] * copies
    for i, (tokens, tags) in enumerate(canaries):
        train += [Document(config.num_train_docs + i, tokens, tags, "canary")] * config.canary_repeats
    first_validation_id = config.num_train_docs + config.num_canaries
    validation = tuple(Document(first_validation_id + i, tokens, tags, "normal")
                       for i, (tokens, tags) in enumerate(natural[config.num_train_docs:]))
    order = rng.permutation(len(train))
    return Corpus(vocab.words, tuple(train[i] for i in order.tolist()), validation)
