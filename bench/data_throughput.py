"""Does data ever limit training? Batch assembly (``batch(step)``) against the train step, and materialization.

    python -m bench.data_throughput [--sizes=tiny,small] [--batch=32] [--seq=128] [--store_examples=500000]

Part 1, in one run per size: the time of ``run.feeder.train_batch(step)`` (step-indexed rows from the memory-mapped
store, a fancy-indexed read at random rows, and the host->device array) over consecutive steps, against the jitted
train step on the same batch shape; reported as examples/s and as a fraction of the step. It is measured on the
run's own store and on a large random store (``--store_examples`` rows, written once to a temporary directory and
read with a cold permutation each epoch).
Part 2: materialization throughput (documents/s and tokens/s, once per run) of memdyn's seqio tasks: the
memdyn_synthetic TFDS dataset with a word vocabulary and gold tags, and local text files with a unigram vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memdyn import config as config_lib  # noqa: E402
from memdyn.data import build, run_data  # noqa: E402
from memdyn.data.build import corpus as corpus_lib  # noqa: E402
from memdyn.data.order import StepOrder  # noqa: E402
from memdyn.data.store import (
    ExampleStore,  # noqa: E402
    write_store,  # noqa: E402
)
from memdyn.train import steps as core


def _config(size: str, batch: int, seq: int):
    c = config_lib.load_config_file(os.path.join(config_lib.CONFIG_DIR, "base.py"))
    c.model.size, c.batch_size, c.data.seq_len = size, batch, seq + 1  # a causal model reads seq_len - 1 tokens
    c.optimizer.warmup_steps = 0
    return c


def time_batches(run, steps: int, first_step: int = 0) -> float:
    """Median seconds of the feeder's train_batch over ``steps`` consecutive steps (each blocked until on device)."""
    times = []
    for step in range(first_step, first_step + steps):
        start = time.perf_counter()
        jax.block_until_ready(run.feeder.train_batch(step))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_train_step(run, steps: int) -> float:
    params, opt_state = core.init_state(run)
    step_fn = core.make_train_step(run)
    with run.context():
        tokens = run.feeder.train_batch(0)  # the whole batch (tokens, ids, tags)
        params, opt_state, m = step_fn(params, opt_state, tokens, np.int32(0))
        jax.block_until_ready(m["loss"])
        start = time.perf_counter()
        for i in range(steps):
            params, opt_state, m = step_fn(params, opt_state, tokens, np.int32(i))
        jax.block_until_ready(m["loss"])
    return (time.perf_counter() - start) / steps


def bench_batches(size: str, batch: int, seq: int, steps: int, big_store: str, work: str) -> list[dict]:
    config = _config(size, batch, seq)
    data = build.prepare(config, os.path.join(work, f"{size}-L{seq}"))
    run = core.build_run(config, data)
    step_s = time_train_step(run, steps)
    rows = []
    for name, store_dir in (("run store", None), ("large store", big_store)):
        if store_dir is not None:  # the same run reading a large store: a fresh order, so rows are cold
            big = run_data.RunData(train=ExampleStore(store_dir), sets={}, words=None, vocab_size=data.vocab_size)
            run = dataclasses.replace(run, data=big, order=StepOrder(big.train.num_examples, batch, 12345))
        with run.context():
            batch_s = time_batches(run, 3 * steps)
        rows.append(
            {
                "size": size,
                "store": name,
                "examples": run.data.train.num_examples,
                "batch_ms": 1e3 * batch_s,
                "examples_per_s": batch / batch_s,
                "step_ms": 1e3 * step_s,
                "fraction": batch_s / step_s,
            }
        )
    return rows


def bench_materialize(work: str) -> list[dict]:
    from memdyn.config import apply_overrides, load_config_file

    out = []
    tfds_config = load_config_file(os.path.join(config_lib.CONFIG_DIR, "tfds_synthetic.py"))
    start = time.perf_counter()
    data = build.prepare(tfds_config, os.path.join(work, "mat-tfds"))
    out.append(
        _materialized(
            "tfds memdyn_synthetic (word vocab, gold tags; TFDS build included)", data, time.perf_counter() - start
        )
    )
    corpus_dir = os.path.join(work, "text")
    os.makedirs(corpus_dir)
    rng = np.random.default_rng(0)
    words = np.array(corpus_lib.vocabulary(2048)[corpus_lib.NUM_SPECIAL :])
    for part in range(4):
        with open(os.path.join(corpus_dir, f"part{part}.txt"), "w") as f:
            for _ in range(1000):
                f.write(
                    " ".join(
                        " ".join(rng.choice(words, rng.integers(5, 15))).capitalize() + "."
                        for _ in range(rng.integers(3, 10))
                    )
                    + "\n"
                )
    text_config = apply_overrides(
        load_config_file(os.path.join(config_lib.CONFIG_DIR, "text.py"), corpus_dir), {"data.vocab.size": 2000}
    )
    start = time.perf_counter()
    data = build.prepare(text_config, os.path.join(work, "mat-text"))
    out.append(
        _materialized("text, 4 files (unigram vocab trained, sentence split)", data, time.perf_counter() - start)
    )
    try:
        from memdyn.data.build import tagging

        tagging.check_available(tagging.DEFAULT_MODEL)
    except ImportError:
        return out  # the `tags` extra is not installed
    spacy_config = apply_overrides(
        text_config, {"data.tags": "spacy", "data.vocab.path": os.path.join(work, "mat-text", "data", "vocab.model")}
    )
    start = time.perf_counter()
    data = build.prepare(spacy_config, os.path.join(work, "mat-spacy"))
    out.append(_materialized("text, 4 files, spaCy tags (vocab given)", data, time.perf_counter() - start))
    return out


def _materialized(name: str, data, seconds: float) -> dict:
    stores = [data.train, *data.sets.values()]
    docs = sum(len(np.unique(s.doc_ids)) for s in stores)
    tokens = sum(int(s.token_counts(data.pad_id).sum()) for s in stores)
    return {
        "source": name,
        "docs": docs,
        "tokens": tokens,
        "seconds": seconds,
        "docs_per_s": docs / seconds,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--store_examples", type=int, default=500_000)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, jax {jax.__version__}")
    with tempfile.TemporaryDirectory() as work:
        big = os.path.join(work, "big")
        rng = np.random.default_rng(0)
        write_store(
            big,
            tokens=rng.integers(4, 2048, (args.store_examples, args.seq + 1), dtype=np.int32),
            example_ids=np.arange(args.store_examples),
            doc_ids=np.arange(args.store_examples),
            manifest={"vocab_size": 2048},
        )
        print(
            f"\nbatch(step): batch {args.batch} x {args.seq + 1} tokens; large store {args.store_examples:,} "
            f"examples ({args.store_examples * (args.seq + 1) * 4 / 2**20:.0f} MiB)\n"
        )
        print("| size | store | examples | batch(step) ms | examples/s | train step ms | batch / step |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes.split(","):
            for r in bench_batches(size, args.batch, args.seq, args.steps, big, work):
                print(
                    f"| {r['size']} | {r['store']} | {r['examples']:,} | {r['batch_ms']:.2f} | "
                    f"{r['examples_per_s']:,.0f} | {r['step_ms']:.1f} | {100 * r['fraction']:.2f}% |",
                    flush=True,
                )
        print("\n| source | documents | tokens | seconds | documents/s | tokens/s |")
        print("|---|---|---|---|---|---|")
        for r in bench_materialize(work):
            print(
                f"| {r['source']} | {r['docs']:,} | {r['tokens']:,} | {r['seconds']:.1f} | {r['docs_per_s']:,.0f} | "
                f"{r['tokens_per_s']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
