"""``memdyn vocab``: train a SentencePiece vocabulary offline."""

from __future__ import annotations

from memdyn.cli.command import CONFIG, Args, Command, Flag, Usage

FLAGS = (CONFIG, Flag("out", str, None, "The SentencePiece model file to write (<file>.model).", required=True))

USAGES = (
    Usage(
        "memdyn vocab --config=<file>.py [--config.data.vocab.model_type=unigram|bpe|word --config.data.vocab.size=N] "
        "--out=<file>.model",
        "Train a SentencePiece vocabulary on the configured source's training split (tfds or text), offline; use it "
        "with --config.data.vocab.path=<file>.model (ids: 0 pad, 1 eos, 2 unk, 3 <mask>).",
    ),
)


def run(args: Args) -> None:
    from memdyn.data.build import sources

    vocabulary = sources.train_vocabulary_file(args.config, args.out)
    print(f"wrote {args.out}: {vocabulary.vocab_size} ids ({args.config.data.vocab.model_type})")


COMMAND = Command("vocab", "train a SentencePiece vocabulary offline", USAGES, FLAGS, run)
