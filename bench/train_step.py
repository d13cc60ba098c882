"""Train-step throughput of memdyn across sizes, MFU against the measured matmul peak, the overhead of the
per-batch memorization metrics, and a plain-PyTorch training step of the same shape — all in one run.

    python -m bench.train_step [--sizes=tiny,small,medium] [--batch=16] [--seq=128] [--steps=10] [--rounds=6]
        [--warmup=5]

memdyn's step (with the memorization metrics and the per-tag POS counts of the tagged corpus, with the
memorization metrics alone, and with the loss alone) and PyTorch's are timed in interleaved windows after the same
warm-up, and a round of windows in which other processes kept more than a tenth of a core busy is discarded
(bench.windows): on 2 cores another process slows PyTorch 10-25x and XLA about 2x.

Conventions: tokens/s counts the B·L positions the model reads per update; training FLOPs per token are
6·(layer + output-projection matmul params) + 12·layers·L·d_model (attention scores and values), see
memdyn.model.sizes.train_flops_per_token. MFU = FLOPs/s ÷ the measured fp32 matmul peak of this machine (bench.peak).
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
from bench.windows import MAX_OTHER_CORES, SETTLE_SECONDS, timed_window  # noqa: E402
from memdyn import config as config_lib  # noqa: E402
from memdyn.data import build  # noqa: E402
from memdyn.model import sizes
from memdyn.train import steps as core


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


def bench_size(
    size: str, batch: int, seq: int, steps: int, peak: float, data_dir: str, rounds: int = 6, warmup: int = 5
) -> dict:
    """memdyn's step with and without the memorization metrics and the PyTorch peer, timed in interleaved
    windows of ``steps`` steps (``rounds`` of four windows) after ``warmup`` steps of each; a round in which
    other processes kept more than ``windows.MAX_OTHER_CORES`` busy is discarded. Ratios are per round, then the
    median."""
    from bench.torch_peer import make_torch_step  # torch only when the peer runs

    config = _config(size, batch, seq)
    data = build.prepare(config, os.path.join(data_dir, f"L{seq}"))
    run = core.build_run(config, data)
    params, opt_state = core.init_state(run)
    no_pos = config.copy_and_resolve_references()
    no_pos.eval.pos = False  # the memorization metrics alone, without the per-tag counts of the tagged corpus
    fns = {
        "with": core.make_train_step(run, memorization_metrics=True),
        "memorization": core.make_train_step(core.build_run(no_pos, data), memorization_metrics=True),
        "without": core.make_train_step(run, memorization_metrics=False),
    }
    shape = run.shape
    peer_step = make_torch_step(
        num_layers=shape.num_layers,
        d_model=shape.d_model,
        num_heads=shape.num_heads,
        d_ff=shape.d_ff,
        vocab_size=shape.vocab_size,
        seq_len=seq,
        batch_size=batch,
        threads=os.cpu_count(),
    )
    state = [params, opt_state]
    with run.context():
        tokens = run.feeder.train_batch(0)  # the whole batch (tokens, ids, tags)

        def memdyn_window(fn, n: int):
            def go():
                p, o = state
                for i in range(n):
                    p, o, m = fn(p, o, tokens, np.int32(i))
                jax.block_until_ready(m["loss"])
                state[:] = [p, o]

            return go

        def torch_window(n: int):
            def go():
                for _ in range(n):
                    acc = peer_step()
                acc.item()

            return go

        windows = {**{name: (lambda n, fn=fn: memdyn_window(fn, n)) for name, fn in fns.items()}, "torch": torch_window}
        for make in windows.values():  # compile and warm up all three before timing any
            make(warmup)()
        kept, others = [], []
        names = list(windows)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            times = {}
            for name in order:
                time.sleep(SETTLE_SECONDS)
                times[name] = timed_window(windows[name](steps))
            print(
                f"  {size} round {r}: " + ", ".join(f"{n} {1e3 * times[n][0] / steps:.1f} ms" for n in order),
                file=sys.stderr,
                flush=True,
            )
            other = max(o for _, o in times.values())
            others.append(other)
            if not other > MAX_OTHER_CORES:  # NaN (no /proc/stat) counts as quiet
                kept.append({name: wall / steps for name, (wall, _) in times.items()})
    if not kept:
        raise RuntimeError(
            f"{size}: every round was noisy (other processes kept up to {max(others):.2f} cores "
            "busy); run the benchmark on an idle machine"
        )
    step_with = statistics.median(r["with"] for r in kept)
    tokens_per_step = batch * seq
    flops = sizes.train_flops_per_token(shape, seq) * tokens_per_step / step_with
    return {
        "size": size,
        "params": run.config.model.params,
        "tokens_per_sec": tokens_per_step / step_with,
        "step_ms": 1e3 * step_with,
        "mfu": flops / peak,
        "metric_overhead": statistics.median(r["with"] / r["without"] for r in kept) - 1,
        "memorization_overhead": statistics.median(r["memorization"] / r["without"] for r in kept) - 1,
        "torch_tokens_per_sec": tokens_per_step / statistics.median(r["torch"] for r in kept),
        "vs_torch": statistics.median(r["torch"] / r["with"] for r in kept),
        "vs_torch_range": (min(r["torch"] / r["with"] for r in kept), max(r["torch"] / r["with"] for r in kept)),
        "rounds": f"{len(kept)}/{rounds}",
        "max_other": max(others),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small,medium")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    peak = measure_matmul_peak()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, {platform.processor() or ''}"
        f" jax {jax.__version__}; measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"batch {args.batch} x seq {args.seq}, fp32, AdamW, grad clipping\n")
    print(
        "| size | params | memdyn tokens/s | step ms | MFU | metrics overhead: M / M + POS | PyTorch tokens/s | "
        "memdyn / PyTorch (range) | rounds kept | most other load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as data_dir:
        for size in args.sizes.split(","):
            r = bench_size(size, args.batch, args.seq, args.steps, peak, data_dir, args.rounds, args.warmup)
            lo, hi = r["vs_torch_range"]
            print(
                f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['tokens_per_sec']:,.0f} | {r['step_ms']:.1f} | "
                f"{100 * r['mfu']:.1f}% | {100 * r['memorization_overhead']:+.1f}% / "
                f"{100 * r['metric_overhead']:+.1f}% | {r['torch_tokens_per_sec']:,.0f} | "
                f"{r['vs_torch']:.2f}x ({lo:.2f}-{hi:.2f}) | {r['rounds']} | {r['max_other']:.2f} cores |",
                flush=True,
            )


if __name__ == "__main__":
    main()
