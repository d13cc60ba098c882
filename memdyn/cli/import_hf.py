"""``memdyn import-hf``: a local Hugging Face GPT-NeoX (Pythia) checkpoint as a memdyn workdir."""

from __future__ import annotations

from memdyn.cli.command import Args, Command, Flag, Usage

FLAGS = (
    Flag("hf_dir", str, None, "A local Hugging Face GPT-NeoX checkpoint directory.", required=True),
    Flag("workdir", str, None, "The new workdir to write (it must hold no run).", required=True),
    Flag("step", int, 0, "The checkpoint's training step: the number the imported checkpoint is stored under."),
)

USAGES = (
    Usage(
        "memdyn import-hf --hf_dir=<dir> --workdir=<dir> [--step=<S>]",
        "Read a local Hugging Face GPT-NeoX checkpoint (Pythia: config.json + *.safetensors, nothing downloaded) "
        "into a new workdir: config.json (model.size='custom', data.source='imported') and checkpoint S (default "
        "0: give the checkpoint's training step), which `memdyn extract` scores from --tokens or --indexed data "
        "like any run.",
    ),
)


def run(args: Args) -> None:
    from memdyn.extraction import import_hf

    summary = import_hf.import_hf(args.hf_dir, args.workdir, args.step)
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))


COMMAND = Command(
    "import-hf", "a local Hugging Face GPT-NeoX (Pythia) checkpoint as a memdyn workdir", USAGES, FLAGS, run
)
