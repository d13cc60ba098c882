"""Measure the peak matmul throughput of the default JAX device.

Run as ``python -m bench.peak`` to print the result in GFLOP/s.
"""

import time

import jax
import jax.numpy as jnp


def measure_matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
    """Return the best observed FLOP/s of a jitted ``jnp.dot`` of two n x n matrices.

    The kernel is compiled and warmed up once, then timed ``repeats`` times
    (each run synchronised with ``block_until_ready``); the fastest run counts.
    FLOPs per run are 2 * n**3.
    """
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype=dtype)
    b = jax.random.normal(kb, (n, n), dtype=dtype)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()  # compile + warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


if __name__ == "__main__":
    flops = measure_matmul_peak()
    print(f"{jax.devices()[0].platform} matmul peak: {flops / 1e9:.1f} GFLOP/s (fp32, n=2048)")
