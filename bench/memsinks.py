"""Cost of MemSinks: the train step with sequence-tied sink masks against the same SwiGLU model without them, and
the mask computation alone, side by side in one run.

    python -m bench.memsinks [--sizes=tiny,small] [--batch=16] [--seq=128] [--steps=10]

The MemSinks step computes the paper's masks ([B, L, d_ff], from the per-token sequence ids, inside the jitted
step) and multiplies every MLP's hidden units by them; the dense step is the same model and batch with
``config.memsinks.method='none'``. Steps are interleaved so that drift of the machine hits both alike. "mask alone"
is the jitted gate computation for one batch (one [B, 1, d_ff] mask per row, as the step computes it when rows
hold one sequence each), as a fraction of the dense step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.train_step import _config, time_steps  # noqa: E402
from memdyn.data import build  # noqa: E402
from memdyn.studies.memsinks import masks as memsinks
from memdyn.studies.tables import to_markdown  # noqa: E402
from memdyn.train import steps as core  # noqa: E402


def bench_size(size: str, batch: int, seq: int, steps: int, data_dir: str) -> dict:
    results, runs = {}, {}
    for method in ("none", "sinks"):
        config = _config(size, batch, seq)
        config.model.mlp = "swiglu"
        config.memsinks.method = method
        data = build.prepare(config, os.path.join(data_dir, f"L{seq}"))
        runs[method] = core.build_run(config, data)
    state, fns, batch_data = {}, {}, None
    for method, run in runs.items():
        state[method] = core.init_state(run)
        fns[method] = core.make_train_step(run)
        with run.context():
            batch_data = run.feeder.train_batch(0)
            params, opt_state, m = fns[method](*state[method], batch_data, np.int32(0))
            jax.block_until_ready(m["loss"])
            state[method] = (params, opt_state)
    times = {"none": [], "sinks": []}
    for _ in range(3):
        for method, run in runs.items():
            with run.context():
                t, params, opt_state = time_steps(fns[method], *state[method], batch_data, steps, windows=1)
            state[method] = (params, opt_state)
            times[method].append(t)
    sinks = memsinks.from_config(runs["sinks"].config)
    gate = jax.jit(lambda ids: sinks.gate(ids, "train"))
    ids = batch_data["seq_ids_BxL"][:, :1]  # what the step computes: one mask per row (rows hold one sequence)
    jax.block_until_ready(gate(ids))
    mask_times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            out = gate(ids)
        jax.block_until_ready(out)
        mask_times.append((time.perf_counter() - start) / steps)
    dense, with_sinks = statistics.median(times["none"]), statistics.median(times["sinks"])
    results.update(
        size=size,
        params=runs["sinks"].config.model.params,
        d_ff=runs["sinks"].shape.d_ff,
        dense_step_ms=1e3 * dense,
        memsinks_step_ms=1e3 * with_sinks,
        overhead=with_sinks / dense - 1,
        mask_ms=1e3 * statistics.median(mask_times),
        mask_fraction=statistics.median(mask_times) / dense,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"devices {jax.devices()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for size in args.sizes.split(","):
            rows.append(bench_size(size, args.batch, args.seq, args.steps, data_dir))
            print(rows[-1], flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["overhead"] = frame["overhead"].map(lambda x: f"{100 * x:+.1f}%")
    frame["mask_fraction"] = frame["mask_fraction"].map(lambda x: f"{100 * x:.1f}%")
    print(to_markdown(frame, digits=1))


if __name__ == "__main__":
    main()
