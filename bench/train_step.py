"""Train-step throughput of memdyn across sizes, MFU against the measured matmul peak, the overhead of the
per-batch memorization metrics, and a plain-PyTorch training step of the same shape — all in one run.

    python -m bench.train_step [--sizes=tiny,small,medium] [--batch=16] [--seq=128] [--steps=10]

Conventions: tokens/s counts the B·L positions the model reads per update; training FLOPs per token are
6·(layer + output-projection matmul params) + 12·layers·L·d_model (attention scores and values), see
memdyn.sizes.train_flops_per_token. MFU = FLOPs/s ÷ the measured fp32 matmul peak of this machine (bench.peak).
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

from bench.peak import measure_matmul_peak  # noqa: E402
from memdyn import config as config_lib, core, sizes  # noqa: E402
from memdyn.data import build  # noqa: E402


def _config(size: str, batch: int, seq: int):
    c = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    c.model.size, c.batch_size, c.data.seq_len = size, batch, seq + 1  # a causal model reads seq_len - 1 tokens
    c.optimizer.warmup_steps = 0
    c.data.synthetic.num_train_docs = 400
    return c


def time_steps(step_fn, params, opt_state, tokens, steps: int, windows: int = 3):
    """Median seconds per step over ``windows`` timed windows of ``steps`` dispatches each."""
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for i in range(steps):
            params, opt_state, m = step_fn(params, opt_state, tokens, np.int32(i))
        jax.block_until_ready(m["loss"])
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), params, opt_state


def bench_size(size: str, batch: int, seq: int, steps: int, peak: float, data_dir: str) -> dict:
    config = _config(size, batch, seq)
    data = build.prepare(config, os.path.join(data_dir, f"L{seq}"))
    run = core.build_run(config, data)
    params, opt_state = core.init_state(run)
    with_metrics = core.make_train_step(run, memorization_metrics=True)
    without = core.make_train_step(run, memorization_metrics=False)
    with run.context():
        tokens = run.feeder.train_batch(0)  # the whole batch (tokens, ids, tags)
        for fn in (with_metrics, without):  # compile and warm up both before timing either
            params, opt_state, m = fn(params, opt_state, tokens, np.int32(0))
            jax.block_until_ready(m["loss"])
        t_with, t_without = [], []
        for _ in range(3):  # interleave so that drift of the machine hits both alike
            t, params, opt_state = time_steps(with_metrics, params, opt_state, tokens, steps, windows=1)
            t_with.append(t)
            t, params, opt_state = time_steps(without, params, opt_state, tokens, steps, windows=1)
            t_without.append(t)
    step_with, step_without = statistics.median(t_with), statistics.median(t_without)
    shape = run.shape
    tokens_per_step = batch * seq
    flops = sizes.train_flops_per_token(shape, seq) * tokens_per_step / step_with
    from bench.torch_peer import torch_train_tokens_per_sec  # torch only when the peer runs

    peer = torch_train_tokens_per_sec(num_layers=shape.num_layers, d_model=shape.d_model,
                                      num_heads=shape.num_heads, d_ff=shape.d_ff, vocab_size=shape.vocab_size,
                                      seq_len=seq, batch_size=batch, steps=steps, warmup=3,
                                      threads=os.cpu_count())
    return {"size": size, "params": run.config.model.params, "tokens_per_sec": tokens_per_step / step_with,
            "step_ms": 1e3 * step_with, "mfu": flops / peak, "metric_overhead": step_with / step_without - 1,
            "torch_tokens_per_sec": peer["tokens_per_sec"],
            "vs_torch": (tokens_per_step / step_with) / peer["tokens_per_sec"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small,medium")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = measure_matmul_peak()
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, {platform.processor() or ''}"
          f" jax {jax.__version__}; measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"batch {args.batch} x seq {args.seq}, fp32, AdamW, grad clipping\n")
    print("| size | params | memdyn tokens/s | step ms | MFU | metrics overhead | PyTorch tokens/s | memdyn / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as data_dir:
        for size in args.sizes.split(","):
            r = bench_size(size, args.batch, args.seq, args.steps, peak, data_dir)
            print(f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['tokens_per_sec']:,.0f} | {r['step_ms']:.1f} | "
                  f"{100 * r['mfu']:.1f}% | {100 * r['metric_overhead']:+.1f}% | {r['torch_tokens_per_sec']:,.0f} | "
                  f"{r['vs_torch']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
