"""Model size presets and parameter counts computed from the shape alone (no allocation).

CPU-scale presets (≈0.1M–30M parameters at a 2,048-word vocabulary) are for tests and demos. The papers' presets
reproduce the published architectures' shapes: OPT (Tirumala et al. 2022; learned positions with OPT's two
offset rows, tied embeddings) and Pythia (Biderman et al. 2023; GPT-NeoX, rotary on 25% of each head, untied
embeddings). Their counts are tested against the published parameter counts.
"""

from __future__ import annotations

import dataclasses

MLP_KINDS = ("gelu", "swiglu")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    vocab_size: int
    max_len: int  # rows of the learned position table / longest sequence the model accepts
    positions: str = "learned"  # "learned" | "rotary"
    rotary_fraction: float = 1.0  # fraction of each head's dimensions that rotary embeddings rotate
    tie_embeddings: bool = True
    mlp: str = "gelu"  # "gelu" (W_out · gelu(W_in x + b)) | "swiglu" (W_out · (silu(W_gate x) * W_up x), no biases)
    parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX, Pythia); else sequential pre-LN
    norm_eps: float = 1e-5  # LayerNorm epsilon
    rotary_base: float = 10000.0  # rotary embeddings' base (theta)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def validate(self) -> None:
        for field in ("num_layers", "d_model", "num_heads", "d_ff", "vocab_size", "max_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"config.model.{field}={getattr(self, field)} must be positive")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"config.model.d_model={self.d_model} is not divisible by config.model.num_heads={self.num_heads}"
            )
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"config.model.positions={self.positions!r}: expected 'learned' or 'rotary'")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"config.model.mlp={self.mlp!r}: expected one of {MLP_KINDS}")
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ValueError(f"config.model.rotary_fraction={self.rotary_fraction} must be in (0, 1]")
        if not self.norm_eps > 0:
            raise ValueError(f"config.model.norm_eps={self.norm_eps} must be positive")
        if not self.rotary_base > 1:
            raise ValueError(f"config.model.rotary_base={self.rotary_base} must be above 1")


# name -> (num_layers, d_model, num_heads, d_ff, extra fields). Vocabulary and max_len of CPU presets come from
# the data config; the papers' presets carry their own.
CPU_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "nano": (2, 32, 2, 128),  # ≈0.10M params at V=2048
    "micro": (2, 64, 2, 256),  # ≈0.23M
    "tiny": (4, 128, 4, 512),  # ≈1.0M
    "small": (4, 256, 4, 1024),  # ≈3.7M
    "medium": (6, 384, 6, 1536),  # ≈11M
    "large": (8, 512, 8, 2048),  # ≈26M
}

_OPT = dict(vocab_size=50272, max_len=2050, positions="learned", tie_embeddings=True)
_PYTHIA = dict(max_len=2048, positions="rotary", rotary_fraction=0.25, tie_embeddings=False, parallel_residual=True)
PAPER_PRESETS: dict[str, ModelShape] = {
    "opt-125m": ModelShape(12, 768, 12, 3072, **_OPT),
    "opt-355m": ModelShape(24, 1024, 16, 4096, **_OPT),
    "opt-1.3b": ModelShape(24, 2048, 32, 8192, **_OPT),
    "opt-2.7b": ModelShape(32, 2560, 32, 10240, **_OPT),
    "opt-6.7b": ModelShape(32, 4096, 32, 16384, **_OPT),
    "opt-13b": ModelShape(40, 5120, 40, 20480, **_OPT),
    "pythia-70m": ModelShape(6, 512, 8, 2048, vocab_size=50304, **_PYTHIA),
    "pythia-160m": ModelShape(12, 768, 12, 3072, vocab_size=50304, **_PYTHIA),
    "pythia-410m": ModelShape(24, 1024, 16, 4096, vocab_size=50304, **_PYTHIA),
    "pythia-1b": ModelShape(16, 2048, 8, 8192, vocab_size=50304, **_PYTHIA),
    "pythia-1.4b": ModelShape(24, 2048, 16, 8192, vocab_size=50304, **_PYTHIA),
    "pythia-2.8b": ModelShape(32, 2560, 32, 10240, vocab_size=50304, **_PYTHIA),
    "pythia-6.9b": ModelShape(32, 4096, 32, 16384, vocab_size=50432, **_PYTHIA),
    "pythia-12b": ModelShape(36, 5120, 40, 20480, vocab_size=50688, **_PYTHIA),
}

PRESET_NAMES = tuple(CPU_PRESETS) + tuple(PAPER_PRESETS)
CUSTOM = "custom"  # config.model.size of a shape given field by field (memdyn import-hf writes it)


def preset_shape(name: str, *, vocab_size: int, max_len: int) -> ModelShape:
    """Shape of preset ``name``; CPU presets take vocabulary and length from the data."""
    if name in PAPER_PRESETS:
        return PAPER_PRESETS[name]
    if name in CPU_PRESETS:
        layers, d_model, heads, d_ff = CPU_PRESETS[name]
        return ModelShape(layers, d_model, heads, d_ff, vocab_size=vocab_size, max_len=max_len)
    raise ValueError(f"config.model.size={name!r} is not a known size preset; known: {', '.join(PRESET_NAMES)}")


def count_params(shape: ModelShape) -> int:
    """Parameters of memdyn's Transformer with this shape, by formula."""
    d, f, v = shape.d_model, shape.d_ff, shape.vocab_size
    attention = 4 * (d * d + d)  # q, k, v, o kernels and biases
    mlp = 3 * d * f if shape.mlp == "swiglu" else d * f + f + f * d + d
    layer_norms = 2 * 2 * d
    per_layer = attention + mlp + layer_norms
    embeddings = v * d * (1 if shape.tie_embeddings else 2)
    positions = shape.max_len * d if shape.positions == "learned" else 0
    return embeddings + positions + shape.num_layers * per_layer + 2 * d  # + final layer norm


def train_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token: 6·N_nonembedding-plus-unembedding + attention scores (PaLM convention).

    6·N counts forward (2N) and backward (4N) matmul FLOPs per token over the matmul parameters: the layers and
    the output projection (V·D). Embedding lookups and position tables are gathers, not matmuls, so they are
    excluded. Attention adds 6·L·(2·seq_len·d_model) for QKᵀ and AV (12·L·T·D).
    """
    d, f, v = shape.d_model, shape.d_ff, shape.vocab_size
    mlp_matrices = 3 if shape.mlp == "swiglu" else 2
    matmul_params = shape.num_layers * (4 * d * d + mlp_matrices * d * f) + v * d
    return 6.0 * matmul_params + 12.0 * shape.num_layers * seq_len * d
