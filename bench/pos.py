"""Step-time overhead of the per-part-of-speech counts (memdyn.studies.pos.counts) in the train step, side by side in
one run.

    python -m bench.pos [--sizes=tiny,small] [--batch=32] [--seq=64] [--steps=20] [--rounds=5]

The same model, data (the embedded corpus, tagged) and batch are trained by two jitted train steps that differ
only in ``config.eval.pos`` (both compute the memorization metrics). The steps are timed in alternating windows
so that drift of the machine hits both alike; the overhead is the ratio of the median step times minus one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.train_step import time_steps  # noqa: E402
from memdyn import config as config_lib  # noqa: E402
from memdyn.data import build  # noqa: E402
from memdyn.train import steps as core


def _config(size: str, batch: int, seq: int, pos: bool):
    c = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    c.model.size, c.batch_size, c.data.seq_len = size, batch, seq
    c.optimizer.warmup_steps = 0
    c.data.synthetic.num_train_docs = 400
    c.eval.pos = pos
    return c


def bench_size(size: str, batch: int, seq: int, steps: int, rounds: int, data_dir: str) -> dict:
    runs, step_fns = {}, {}
    for pos in (True, False):
        config = _config(size, batch, seq, pos)
        runs[pos] = core.build_run(config, build.prepare(config, data_dir))
        step_fns[pos] = core.make_train_step(runs[pos])
    assert runs[True].tag_names and not runs[False].tag_names, "the corpus should be tagged"
    params, opt_state = core.init_state(runs[True])
    times = {True: [], False: []}
    with runs[True].context():
        batch_arrays = runs[True].feeder.train_batch(0)
        for fn in step_fns.values():  # compile and warm up both before timing either
            params, opt_state, m = fn(params, opt_state, batch_arrays, np.int32(0))
            jax.block_until_ready(m["loss"])
        for _ in range(rounds):
            for pos, fn in step_fns.items():
                t, params, opt_state = time_steps(fn, params, opt_state, batch_arrays, steps, windows=1)
                times[pos].append(t)
    with_pos, without = statistics.median(times[True]), statistics.median(times[False])
    return {
        "size": size,
        "params": runs[True].config.model.params,
        "tags": len(runs[True].tag_names),
        "with_ms": 1e3 * with_pos,
        "without_ms": 1e3 * without,
        "overhead": with_pos / without - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, {platform.processor() or ''}"
        f" jax {jax.__version__}; load average at start {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"batch {args.batch} x seq {args.seq}, fp32, memorization metrics on in both; median of {args.rounds} "
        f"alternating windows of {args.steps} steps\n"
    )
    print("| size | params | tags | step ms without POS | step ms with POS | POS overhead |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as data_dir:
        for size in args.sizes.split(","):
            r = bench_size(size, args.batch, args.seq, args.steps, args.rounds, data_dir)
            print(
                f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['tags']} | {r['without_ms']:.2f} | "
                f"{r['with_ms']:.2f} | {100 * r['overhead']:+.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
