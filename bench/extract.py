"""Extractability throughput (Biderman et al. 2023, M = N = 32): memdyn against the way the Pythia scripts do it,
side by side in one run.

    python -m bench.extract [--sizes=tiny,small] [--batch=32] [--rounds=5]

Contenders, on one batch of B random sequences of M + N tokens and the same weights (memdyn's random init, copied
into the Hugging Face model):

* memdyn one-pass: ``teacher_forced_extractability`` (memorized + prefix_match from one teacher-forced forward).
* memdyn decode: ``greedy_decode`` alone (KV cache), the like-for-like peer of HF's cached ``generate``.
* memdyn KV cache: ``extractability`` (greedy decoding with the KV cache -> position-wise score, plus the one-pass
  quantities and the continuation loss: a second, teacher-forced pass).
* HF no cache: what EleutherAI's predictable-memorization scripts run — ``transformers`` causal LM
  (GPT2-style config of the same shape, built locally, nothing downloaded), ``model.generate(max_new_tokens=N,
  do_sample=False, use_cache=False)``, then the position-wise score against the true tokens. fp32 on CPU here
  (they ran fp16 on GPUs, batches of 1024).
* HF cache: the same generate with ``use_cache=True``, an extra column.
* Scanned decode, below the table: ``greedy_decode`` of the same weights stacked for ``model.scan_layers=True``,
  against the unrolled model's decode (the layout big presets train in, and extract from).
* Below the table, both HF runs again with one torch thread instead of all cores: on a shared machine whose cores
  other jobs also use, OpenMP's barriers can make all-core torch many times slower than one thread.

Each contender is warmed up (compiled) first; then ``rounds`` rounds run every contender once per round, in turn
(interleaved, so drift hits all alike; the order rotates each round and each window follows a short idle pause),
each timing a window of repeated calls of at least ``--min-window`` seconds. A round in which other processes kept
more than a tenth of a core busy is discarded (bench.windows). Throughput = B / median seconds per call over the
kept rounds; ratios are per round, then the median. The ported weights also give a correctness
check: the fraction of greedy tokens on which memdyn's KV-cache decoding and HF generate agree, equal scores, and
one-pass prefix lengths equal to the decoded ones (each row's continuation starts with a planted greedy prefix of
0..N tokens, so scores, prefix lengths and ``memorized`` are not all zero).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.windows import MAX_OTHER_CORES, SETTLE_SECONDS, timed_calls  # noqa: E402
from memdyn.extraction import extractability as extract  # noqa: E402
from memdyn.model import sizes
from memdyn.model.layout import stack_blocks  # noqa: E402
from memdyn.model.transformer import Transformer  # noqa: E402


def hf_model(shape: sizes.ModelShape, params):
    """GPT-2 LM of memdyn's shape (pre-LN, exact GELU, learned positions, tied embeddings) carrying memdyn's
    weights. GPT-2's Conv1D weights are [in, out], like memdyn's kernels."""
    import transformers

    d = shape.d_model
    config = transformers.GPT2Config(
        n_layer=shape.num_layers,
        n_embd=d,
        n_head=shape.num_heads,
        n_inner=shape.d_ff,
        vocab_size=shape.vocab_size,
        n_positions=shape.max_len,
        activation_function="gelu",
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        layer_norm_epsilon=1e-5,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())  # noqa: E731
    flat = lambda a: np.asarray(a).reshape(a.shape[0], -1)  # noqa: E731  [d, h, k] -> [d, h*k]
    state = {
        "transformer.wte.weight": t(params["embed"]),
        "transformer.wpe.weight": t(params["position_embed"]),
        "transformer.ln_f.weight": t(params["final_norm"]["scale"]),
        "transformer.ln_f.bias": t(params["final_norm"]["bias"]),
        "lm_head.weight": t(params["embed"]),
    }
    for i in range(shape.num_layers):
        b, p = params[f"block_{i:02d}"], f"transformer.h.{i}."
        a = b["attention"]
        state.update(
            {
                p + "ln_1.weight": t(b["attention_norm"]["scale"]),
                p + "ln_1.bias": t(b["attention_norm"]["bias"]),
                p + "ln_2.weight": t(b["mlp_norm"]["scale"]),
                p + "ln_2.bias": t(b["mlp_norm"]["bias"]),
                p + "attn.c_attn.weight": t(
                    np.concatenate([flat(a[f"{n}_kernel"]) for n in ("query", "key", "value")], axis=1)
                ),
                p + "attn.c_attn.bias": t(
                    np.concatenate([np.ravel(a[f"{n}_bias"]) for n in ("query", "key", "value")])
                ),
                p + "attn.c_proj.weight": t(np.reshape(a["out_kernel"], (d, d))),
                p + "attn.c_proj.bias": t(a["out_bias"]),
                p + "mlp.c_fc.weight": t(b["mlp"]["in_kernel"]),
                p + "mlp.c_fc.bias": t(b["mlp"]["in_bias"]),
                p + "mlp.c_proj.weight": t(b["mlp"]["out_kernel"]),
                p + "mlp.c_proj.bias": t(b["mlp"]["out_bias"]),
            }
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"weight port incomplete: missing {missing}, unexpected {unexpected}")
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model, sum(p.numel() for p in model.parameters())


def hf_extractability(model, tokens_BxT: torch.Tensor, prompt_len: int, num_new: int, use_cache: bool):
    """Greedy generate from the first M tokens, then Biderman's position-wise score against the true tokens."""
    prompts = tokens_BxT[:, :prompt_len]
    with torch.inference_mode():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
            use_cache=use_cache,
        )
        continuation = out[:, prompt_len : prompt_len + num_new]
        score = (continuation == tokens_BxT[:, prompt_len : prompt_len + num_new]).float().mean(dim=1)
    return {"score": score, "continuation": continuation}


def with_threads(threads: int, fn):
    """``fn`` run with ``threads`` torch intra-op threads, restoring the previous setting."""

    def run():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(previous)

    return run


def bench_size(
    size: str, batch: int, prompt_len: int, num_new: int, vocab: int, rounds: int, min_window: float
) -> dict:
    max_len = prompt_len + num_new
    shape = sizes.preset_shape(size, vocab_size=vocab, max_len=max_len)
    model = Transformer(shape, causal=True, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tokens_np = np.random.default_rng(0).integers(0, vocab, (batch, max_len), dtype=np.int32)
    # Plant greedy prefixes so that every quantity is non-trivial: row i's continuation starts with the first
    # k_i greedy tokens (k_i spread over 0..N), then random tokens. The amount of work does not depend on it.
    greedy = np.asarray(extract.greedy_decode(graphdef, params, jnp.asarray(tokens_np[:, :prompt_len]), num_new))
    planted = np.linspace(0, num_new, batch).round().astype(int)
    for i, k in enumerate(planted):
        tokens_np[i, prompt_len : prompt_len + k] = greedy[i, :k]
    tokens_jax = jnp.asarray(tokens_np)
    tokens_torch = torch.from_numpy(tokens_np.astype(np.int64))
    hf, hf_params = hf_model(shape, params)
    scanned_graphdef, scanned_state = nnx.split(Transformer(shape, causal=True, rngs=nnx.Rngs(0), scan_layers=True))
    nnx.replace_by_pure_dict(scanned_state, stack_blocks(params))
    scanned_params = nnx.to_pure_dict(scanned_state)

    contenders = {
        "one_pass": lambda: jax.block_until_ready(
            extract.teacher_forced_extractability(graphdef, params, tokens_jax, prompt_len, num_new)
        ),
        "decode": lambda: jax.block_until_ready(
            extract.greedy_decode(graphdef, params, tokens_jax[:, :prompt_len], num_new)
        ),
        "decode_scanned": lambda: jax.block_until_ready(
            extract.greedy_decode(scanned_graphdef, scanned_params, tokens_jax[:, :prompt_len], num_new)
        ),
        "kv": lambda: jax.block_until_ready(
            extract.extractability(graphdef, params, {"tokens_BxL": tokens_jax}, prompt_len, num_new)
        ),
        "hf_nocache": lambda: hf_extractability(hf, tokens_torch, prompt_len, num_new, use_cache=False),
        "hf_cache": lambda: hf_extractability(hf, tokens_torch, prompt_len, num_new, use_cache=True),
        # Extra: one torch thread. On a shared, oversubscribed machine OpenMP's barriers make all-core torch
        # far slower than one thread; this shows how much of the gap that is.
        "hf_nocache_1t": with_threads(1, lambda: hf_extractability(hf, tokens_torch, prompt_len, num_new, False)),
        "hf_cache_1t": with_threads(1, lambda: hf_extractability(hf, tokens_torch, prompt_len, num_new, True)),
    }
    results = {name: fn() for name, fn in contenders.items()}  # warm-up: compile memdyn, warm torch
    for fn in contenders.values():
        fn()
    names, kept, others = list(contenders), [], []
    for r in range(rounds):  # order rotated each round, a settle pause before each window (bench.windows)
        times = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(SETTLE_SECONDS)
            times[name] = timed_calls(contenders[name], min_window)
        others.append(max(other for _, other in times.values()))
        if not others[-1] > MAX_OTHER_CORES:  # NaN (no /proc/stat) counts as quiet
            kept.append({name: seconds for name, (seconds, _) in times.items()})
    if not kept:
        raise RuntimeError(
            f"{size}: every round was noisy (other processes kept up to {max(others):.2f} cores "
            "busy); run the benchmark on an idle machine"
        )
    per_sec = {name: batch / statistics.median(r[name] for r in kept) for name in names}
    # Ratios per round, then the median: each ratio compares windows minutes apart at most.
    ratios = {
        "one_pass_hf": statistics.median(r["hf_nocache"] / r["one_pass"] for r in kept),
        "kv_hf": statistics.median(r["hf_nocache"] / r["kv"] for r in kept),
        "decode_hf_cache": statistics.median(r["hf_cache"] / r["decode"] for r in kept),
        "scanned_unrolled": statistics.median(r["decode_scanned"] / r["decode"] for r in kept),
    }

    memdyn_cont = np.asarray(results["kv"]["continuation"])
    agree = float(np.mean(memdyn_cont == results["hf_nocache"]["continuation"].numpy()))
    agree_cache = float(
        np.mean(results["hf_cache"]["continuation"].numpy() == results["hf_nocache"]["continuation"].numpy())
    )
    # The one-pass quantities must match those of the decoded continuation, and the scores must match HF's.
    prefix = np.asarray(results["kv"]["prefix_match"])
    greedy_prefix = np.cumprod(memdyn_cont == tokens_np[:, prompt_len:], axis=1).sum(axis=1)
    one_pass_ok = bool(
        (prefix == greedy_prefix).all() and (np.asarray(results["one_pass"]["prefix_match"]) == prefix).all()
    )
    scanned_ok = bool(np.array_equal(np.asarray(results["decode_scanned"]), np.asarray(results["decode"])))
    score_ok = bool(np.array_equal(np.asarray(results["kv"]["score"]), results["hf_nocache"]["score"].numpy()))
    return {
        "size": size,
        "params": sizes.count_params(shape),
        "hf_params": hf_params,
        **per_sec,
        **ratios,
        "rounds": f"{len(kept)}/{rounds}",
        "max_other": max(others),
        "agree": agree,
        "agree_cache": agree_cache,
        "one_pass_ok": one_pass_ok,
        "score_ok": score_ok,
        "scanned_ok": scanned_ok,
        "memorized": int(np.asarray(results["kv"]["memorized"]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--num-new", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-window", type=float, default=1.0, help="seconds per timed window")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count())
    device = jax.devices()[0]
    print(
        f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, {platform.processor() or ''}"
        f" jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"batch {args.batch} sequences x {args.prompt_len + args.num_new} tokens, M = {args.prompt_len}, "
        f"N = {args.num_new}, vocab {args.vocab}, fp32, greedy; median of {args.rounds} interleaved rounds "
        "(ratios: per round, then the median)\n"
    )
    print(
        "| size | params | memdyn one-pass seq/s | memdyn decode seq/s | memdyn KV-cache score seq/s | "
        "HF generate no-cache seq/s | HF generate cache seq/s | one-pass / HF no-cache | KV score / HF no-cache "
        "| decode / HF cache | rounds kept | most other load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for size in args.sizes.split(","):
        r = bench_size(size, args.batch, args.prompt_len, args.num_new, args.vocab, args.rounds, args.min_window)
        print(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['one_pass']:,.0f} | {r['decode']:,.0f} | "
            f"{r['kv']:,.0f} | {r['hf_nocache']:,.1f} | {r['hf_cache']:,.1f} | "
            f"{r['one_pass_hf']:,.0f}x | {r['kv_hf']:,.1f}x | {r['decode_hf_cache']:,.2f}x | {r['rounds']} | "
            f"{r['max_other']:.2f} cores |",
            flush=True,
        )
        checks.append(
            f"{size}: HF params {r['hf_params']:,} (memdyn {r['params']:,}); greedy tokens agreeing "
            f"memdyn KV vs HF no-cache {100 * r['agree']:.1f}%, HF cache vs no-cache "
            f"{100 * r['agree_cache']:.1f}%; memdyn scores == HF scores: {r['score_ok']}; one-pass "
            f"prefix_match == decoded prefix: {r['one_pass_ok']} ({r['memorized']}/{args.batch} "
            f"memorized by construction)"
        )
        checks.append(
            f"{size}, HF with 1 torch thread instead of {os.cpu_count()}: no-cache "
            f"{r['hf_nocache_1t']:,.1f} seq/s, cache {r['hf_cache_1t']:,.1f} seq/s; memdyn one-pass / "
            f"HF no-cache 1 thread {r['one_pass'] / r['hf_nocache_1t']:,.0f}x, KV / HF no-cache 1 thread "
            f"{r['kv'] / r['hf_nocache_1t']:,.1f}x"
        )
        checks.append(
            f"{size}, decoding with model.scan_layers=True (same weights, stacked): "
            f"{r['decode_scanned']:,.0f} seq/s, scanned / unrolled time {r['scanned_unrolled']:.2f}x, "
            f"same tokens: {r['scanned_ok']}"
        )
    print()
    for line in checks:
        print("- " + line)


if __name__ == "__main__":
    main()
