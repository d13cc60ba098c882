"""Plain-PyTorch peer of the memdyn transformer LM, for side-by-side speed checks.

Model: tied token embedding / output projection, learned absolute positions,
pre-LayerNorm blocks (causal multi-head SDPA attention with biased q/k/v/o
projections, GELU MLP), final LayerNorm. fp32 throughout.

Run as ``python -m bench.torch_peer`` to time a small shape.
"""

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        split = lambda t: t.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only LM; logits = LN(h) @ E^T with E the token embedding."""

    def __init__(self, *, num_layers, d_model, num_heads, d_ff, vocab_size, seq_len):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, d_ff) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T


def make_torch_step(*, num_layers, d_model, num_heads, d_ff, vocab_size, seq_len, batch_size, threads=None, seed=0):
    """One AdamW training step of ``TransformerLM`` on fixed random tokens, as a callable (see below)."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = TransformerLM(
        num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_ff=d_ff, vocab_size=vocab_size, seq_len=seq_len
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return logits.detach().argmax(-1).eq(targets).float().mean()

    return step


def torch_train_tokens_per_sec(
    *, num_layers, d_model, num_heads, d_ff, vocab_size, seq_len, batch_size, steps=10, warmup=3, threads=None, seed=0
) -> dict:
    """Time AdamW training steps of ``TransformerLM`` on random tokens.

    One step = zero_grad, forward, next-token cross-entropy, backward,
    clip_grad_norm_(1.0), optimizer step; argmax accuracy is computed on
    device every step but only read back (``.item()``) at the end.
    Returns tokens_per_sec (from the median step time) and step_time_s (median).
    """
    step = make_torch_step(
        num_layers=num_layers,
        d_model=d_model,
        num_heads=num_heads,
        d_ff=d_ff,
        vocab_size=vocab_size,
        seq_len=seq_len,
        batch_size=batch_size,
        threads=threads,
        seed=seed,
    )
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        acc = step()
        times.append(time.perf_counter() - start)
    acc.item()  # single host sync at the end (CPU ops are synchronous anyway)
    step_time = statistics.median(times)
    return {
        "tokens_per_sec": batch_size * seq_len / step_time,
        "step_time_s": step_time,
    }


if __name__ == "__main__":
    print(
        torch_train_tokens_per_sec(
            num_layers=4, d_model=256, num_heads=4, d_ff=1024, vocab_size=2048, seq_len=128, batch_size=16
        )
    )
