"""Compile time of the train step, scanned layers (``model.scan_layers``) against unrolled ones.

    python -m bench.compile_time [--sizes=small,medium,large,opt-125m,opt-355m] [--seq_len=128] [--batch_size=8]

For each size, in one run, alternating the two layouts: the seconds ``jax.jit(train_step).lower(...).compile()``
takes from abstract state (nothing is allocated or trained), fp32, no persistent compilation cache. Prints one
Markdown row per size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memdyn import config as config_lib  # noqa: E402
from memdyn.data import build  # noqa: E402
from memdyn.train import steps


def compile_seconds(size: str, scan: bool, seq_len: int, batch_size: int, data_dir: str) -> tuple[float, int, int]:
    c = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    c.model.size, c.model.scan_layers, c.batch_size, c.data.seq_len = size, scan, batch_size, seq_len
    c.data.synthetic.num_train_docs = 200
    run = steps.build_run(c, build.prepare(c, data_dir))
    step = steps.make_train_step(run)
    with run.context():
        batch = run.feeder.train_batch(0)
        start = time.perf_counter()
        step.lower(run.abstract_params, run.abstract_opt_state, batch, np.int32(0)).compile()
    return time.perf_counter() - start, run.config.model.params, run.shape.num_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium,large,opt-125m,opt-355m")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    print("| size | params | layers | unrolled compile s | scanned compile s | unrolled / scanned |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            data_dir = os.path.join(tmp, size)
            times = {}
            for scan in (False, True):
                times[scan], params, layers = compile_seconds(size, scan, args.seq_len, args.batch_size, data_dir)
            print(
                f"| {size} | {params / 1e6:,.1f}M | {layers} | {times[False]:.1f} | {times[True]:.1f} | "
                f"{times[False] / times[True]:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
