"""Checkpoint cost: save and restore time, and how long an asynchronous orbax save holds up the train loop.

    python -m bench.checkpoint [--sizes=small,medium] [--steps=20]

For each size, in one run: the wall time of the `save()` call that the loop waits for (async: the copy off the
device; sync: the whole write), the time until an async save is committed, restore time, checkpoint size, and
the extra wall time of `--steps` train steps with one async save issued at the first step versus the same steps
without a save (the save's total cost to the loop, background writing included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memdyn import config as config_lib
from memdyn.data import build  # noqa: E402
from memdyn.train import checkpoint  # noqa: E402
from memdyn.train import steps as core


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def bench_size(size: str, steps: int, tmp: str) -> dict:
    c = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    c.model.size, c.batch_size, c.optimizer.warmup_steps = size, 16, 0
    c.data.synthetic.num_train_docs = 400
    run = core.build_run(c, build.prepare(c, os.path.join(tmp, "data")))
    params, opt_state = core.init_state(run)
    step_fn = core.make_train_step(run)
    meta = {"counters": {}}
    out = {"size": size, "params": run.config.model.params}
    with run.context():
        tokens = run.feeder.train_batch(0)  # the whole batch (tokens, ids, tags)

        def run_steps(save_dir: str | None):
            nonlocal params, opt_state
            start = time.perf_counter()
            ckpt = checkpoint.Checkpointer(save_dir, async_save=True) if save_dir else None
            for i in range(steps):
                params, opt_state, m = step_fn(params, opt_state, tokens, np.int32(i))
                if ckpt is not None and i == 0:
                    ckpt.save(1, params, opt_state, meta)
            jax.block_until_ready(m["loss"])
            if ckpt is not None:
                ckpt.close()
            return time.perf_counter() - start

        run_steps(None)  # compile
        base, with_save = [], []
        for k in range(3):
            base.append(run_steps(None))
            d = os.path.join(tmp, f"loop_{size}_{k}")
            with_save.append(run_steps(d))
            shutil.rmtree(d)
        out["loop_extra_s"] = statistics.median(with_save) - statistics.median(base)

        for mode in ("async", "sync"):
            calls, totals = [], []
            for k in range(3):
                d = os.path.join(tmp, f"{mode}_{size}_{k}")
                ckpt = checkpoint.Checkpointer(d, async_save=(mode == "async"))
                jax.block_until_ready(params)
                start = time.perf_counter()
                ckpt.save(1, params, opt_state, meta)
                calls.append(time.perf_counter() - start)
                ckpt.wait()
                totals.append(time.perf_counter() - start)
                ckpt.close()
                if k < 2:
                    shutil.rmtree(d)
            out[f"{mode}_call_s"], out[f"{mode}_total_s"] = statistics.median(calls), statistics.median(totals)
        out["bytes"] = _dir_size(d)
        restores = []
        for _ in range(3):
            ckpt = checkpoint.Checkpointer(d, read_only=True)
            start = time.perf_counter()
            r = ckpt.restore(1, run.abstract_params, run.abstract_opt_state)
            jax.block_until_ready(r.params)
            restores.append(time.perf_counter() - start)
            ckpt.close()
        out["restore_s"] = statistics.median(restores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform}, {os.cpu_count()} cores; jax {jax.__version__}; disk: local\n")
    print(
        "| size | params | checkpoint MB | async save() blocks | async save committed | sync save | restore | "
        f"extra loop time, {args.steps} steps with one async save |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            r = bench_size(size, args.steps, tmp)
            print(
                f"| {size} | {r['params'] / 1e6:.2f}M | {r['bytes'] / 1e6:.1f} | {1e3 * r['async_call_s']:.0f} ms | "
                f"{1e3 * r['async_total_s']:.0f} ms | {1e3 * r['sync_total_s']:.0f} ms | "
                f"{1e3 * r['restore_s']:.0f} ms | {1e3 * r['loop_extra_s']:+.0f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
