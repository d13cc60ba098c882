"""MemSinks (Ghosal et al. 2025): sequence-tied sink neurons in the MLPs, as per-token gates over hidden units.

The MLP's F hidden units are split: the first ``int(F * p_gen)`` are general (always on); the rest form the sink
pool. A token of sequence id s switches on the pool units of s's mask (each unit active with probability p_mem)
and off the others, so repetitions of one sequence train the same few sink units; at test time the sinks are
dropped. Every function here is pure jnp on uint32/int32 (JAX runs without 64-bit integers) and elementwise over
the hidden axis: under ``sharding.constrain(..., 'act_mlp')`` each device computes only its slice of the gate.

Masks (``pool_mask``, ``config.memsinks.mask``):
  paper   the authors' published hash, bit for bit: ``c_j = (a**j) mod P`` with the power wrapping in int64,
          ``m = (s * 2**16 * c_j) mod P`` with int64 products that wrap, unit active iff ``float32(m) / float32(P)
          < p_mem``; ``mod`` is the non-negative remainder. 64-bit products are emulated with 16-bit limbs.
  random  a clean alternative: unit active iff the top 24 bits of a 32-bit avalanche hash of (id, unit), / 2**24,
          are < p_mem.

Gates over all F units (``gate``), for a mode:
  train         general units 1, pool units the sequence's mask (also the paper's "activate_seq")
  all           general 1, pool p_mem (the expected training activation)
  dropout       general (p_gen + p_mem) / p_gen, pool 0 (the paper's "sinks dropped")
  exclude       as ``all`` but the pool units of the excluded ids are 0
The shared-sink baseline (``method`` "shared") has no masks: its pool is on in ``train`` and ``all`` and off in
``dropout`` (general units unscaled, as its pool was always on in training).
Shape suffixes: B batch, L length, F hidden units (d_ff), U sink-pool units.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from memdyn.model import sharding

PAPER_A = 1588635695
PAPER_P = 4294967291  # the largest prime below 2**32; 2**32 = P + 5
MASK_KINDS = ("paper", "random")
ID_WIDTHS = (64, 32)
EVAL_MODES = ("train", "all", "dropout", "exclude")
_U32 = jnp.uint32


def split_units(d_ff: int, p_gen: float) -> tuple[int, int]:
    """(general units, sink-pool units) of an MLP with ``d_ff`` hidden units."""
    general = int(d_ff * p_gen)
    return general, d_ff - general


def paper_constants(num_units: int) -> np.ndarray:
    """``c_j = (a**j) mod P`` for j < num_units, uint32, with ``a**j`` wrapping around as an int64 (from j = 3)."""
    out, power = np.empty(num_units, np.uint32), 1
    for j in range(num_units):
        signed = power - 2**64 if power >= 2**63 else power
        out[j] = signed % PAPER_P  # Python's % is the non-negative remainder for a positive modulus
        power = (power * PAPER_A) % 2**64
    return out


# ---- 64-bit integer arithmetic on (hi, lo) uint32 pairs -----------------------------------------------------------


def _mul_32x32(a, b):
    """Full 64-bit product of uint32 arrays as (hi, lo)."""
    a0, a1, b0, b1 = a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = p01 + p10
    mid_carry = (mid < p01).astype(_U32)
    lo = p00 + (mid << 16)
    lo_carry = (lo < p00).astype(_U32)
    return p11 + (mid >> 16) + (mid_carry << 16) + lo_carry, lo


def _mul_64x32(hi, lo, c):
    """(hi, lo) * c modulo 2**64 (the wrap-around of an int64 product)."""
    h, l = _mul_32x32(lo, c)
    return h + hi * c, l


def _signed_mod_p(hi, lo):
    """The non-negative remainder mod P of the int64 whose two's-complement bits are (hi, lo), as uint32."""
    # 2**32 = 5 (mod P): fold the high word down until the value fits in 32 bits.
    h, l = _mul_32x32(hi, jnp.full_like(hi, 5))
    l2 = l + lo
    h = h + (l2 < l).astype(_U32)  # h <= 5
    l3 = l2 + 5 * h
    r = l3 + 5 * (l3 < l2).astype(_U32)  # a carry is worth 2**32 = 5; cannot carry again
    p = _U32(PAPER_P)
    r = jnp.where(r >= p, r - p, r)
    # A negative int64 is its unsigned bits minus 2**64, and 2**64 = 25 (mod P).
    negative = hi >= _U32(2**31)
    return jnp.where(negative, jnp.where(r >= 25, r - 25, r + (p - 25)), r)


def _ids_as_words(seq_ids, id_width: int):
    """Sequence ids as the (hi, lo) uint32 words of ``s * 2**16`` in the paper's arithmetic.

    ``id_width`` 64: ids are int64 values (numpy int64, or int32 values sign-extended), so ``s * 2**16`` wraps
    in int64. ``id_width`` 32: ids are int32 and ``s * 2**16`` wraps in int32 before the int64 product.
    """
    if isinstance(seq_ids, np.ndarray) and seq_ids.dtype == np.int64:
        if id_width == 32:
            raise ValueError("id_width=32 takes int32 ids; these are int64")
        bits = seq_ids.view(np.uint64)
        hi, lo = jnp.asarray((bits >> 32).astype(np.uint32)), jnp.asarray((bits & 0xFFFFFFFF).astype(np.uint32))
    else:
        seq_ids = jnp.asarray(seq_ids)
        if seq_ids.dtype != jnp.int32:
            raise ValueError(f"sequence ids must be int32 (or numpy int64), not {seq_ids.dtype}")
        lo = seq_ids.astype(_U32)
        hi = jnp.where(seq_ids < 0, _U32(0xFFFFFFFF), _U32(0))
    if id_width == 64:
        return (hi << 16) | (lo >> 16), lo << 16
    if id_width == 32:
        shifted = lo << 16  # int32 wrap, then sign extension to int64
        return jnp.where(shifted >= _U32(2**31), _U32(0xFFFFFFFF), _U32(0)), shifted
    raise ValueError(f"id_width={id_width}: expected one of {ID_WIDTHS}")


def _paper_pool_mask(hi, lo, constants_U, p_active: float):
    """[..., U] bool from the shifted id words [...] and the constants [U]."""
    ph, pl = _mul_64x32(hi[..., None], lo[..., None], constants_U)
    m = _signed_mod_p(ph, pl)
    return m.astype(jnp.float32) / jnp.float32(PAPER_P) < jnp.float32(p_active)


def paper_mask(seq_ids, num_units: int, p_active: float, *, id_width: int | None = None) -> jax.Array:
    """The published sink mask of each id over the pool's ``num_units`` units: bool ``[..., num_units]``.

    ``seq_ids``: numpy int64 (64-bit arithmetic) or int32 (``id_width`` defaults to 32, the published behaviour
    for int32 ids: ``s * 2**16`` wraps in int32; ``id_width=64`` treats them as int64 values). Id 0 activates
    the whole pool.
    """
    if id_width is None:
        id_width = 64 if getattr(seq_ids, "dtype", None) == np.int64 else 32
    hi, lo = _ids_as_words(seq_ids, id_width)
    return _paper_pool_mask(hi, lo, jnp.asarray(paper_constants(num_units)), p_active)


def _avalanche(x):
    """A 32-bit integer hash with full avalanche (the murmur3 finaliser)."""
    x = x ^ (x >> 16)
    x = x * _U32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * _U32(0xC2B2AE35)
    return x ^ (x >> 16)


def random_mask(seq_ids, num_units: int, p_active: float, *, units=None) -> jax.Array:
    """A clean sink mask: unit j of id s is active iff ``hash(s, j) / 2**24 < p_active`` (top 24 bits of a
    32-bit hash); bool ``[..., U]``. Ids are int32; each unit is active independently with probability
    ``p_active`` over ids. ``units`` [U] (uint32): the unit indices (default 0..num_units-1)."""
    ids = jnp.asarray(seq_ids).astype(_U32)[..., None]
    units = jnp.arange(num_units, dtype=_U32) if units is None else units
    h = _avalanche(_avalanche(ids ^ _U32(0x9E3779B9)) ^ _avalanche(units + _U32(0x7F4A7C15)))
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24) < jnp.float32(p_active)


def pool_mask(seq_ids, num_units: int, p_active: float, kind: str, id_width: int = 64) -> jax.Array:
    """[..., U] bool: the ``kind`` mask of each id over a pool of ``num_units`` units."""
    if kind == "paper":
        return paper_mask(seq_ids, num_units, p_active, id_width=id_width)
    if kind == "random":
        return random_mask(seq_ids, num_units, p_active)
    raise ValueError(f"config.memsinks.mask={kind!r}: expected one of {MASK_KINDS}")


def placebo_ids(step, batch_size: int) -> jax.Array:
    """int32 [B] ids drawn afresh for every (update, row): not tied to the sequence (the placebo control)."""
    rows = jnp.arange(batch_size, dtype=_U32) + jnp.asarray(step).astype(_U32) * _U32(batch_size)
    ids = (_avalanche(rows ^ _U32(0x5BD1E995)) >> 1).astype(jnp.int32)
    return jnp.maximum(ids, 1)


METHODS = ("none", "sinks", "shared")
IDS = ("sequence", "placebo")


@dataclasses.dataclass(frozen=True)
class Sinks:
    """A model's sink layout: F hidden units, the first ``general`` always on, the ``pool`` after them.

    ``method`` "sinks" (MemSinks: each sequence trains its mask's pool units) or "shared" (Ghosal et al.'s
    Section 4 baseline: the whole pool is one shared sink; it is always on in the forward pass, repeated data
    updates only the pool and other data only the general units).
    """

    d_ff: int
    p_gen: float
    p_mem: float
    method: str = "sinks"
    mask: str = "paper"
    id_width: int = 64

    @property
    def general(self) -> int:
        return split_units(self.d_ff, self.p_gen)[0]

    @property
    def pool(self) -> int:
        return self.d_ff - self.general

    def pool_mask(self, seq_ids) -> jax.Array:
        """[..., U] bool: the training mask of each id over the pool."""
        return pool_mask(seq_ids, self.pool, self.p_mem, self.mask, self.id_width)

    def gate(self, seq_ids_BxL, mode: str = "train", excluded_ids=None) -> jax.Array | None:
        """float32 ``[B, L, F]`` gate of the hidden units in ``mode`` (module docstring); None: no gate.

        Computed elementwise over F (the unit's constant is a per-unit array), so under an ``act_mlp`` sharding
        constraint each device computes only its own units. ``excluded_ids`` [E]: mode ``exclude``.
        """
        is_general_F = jnp.arange(self.d_ff) < self.general
        if self.method == "shared":  # the pool is on whenever it is not dropped
            if mode in ("train", "all"):
                return None
            if mode != "dropout":
                raise ValueError(
                    f"memsinks mode {mode!r} needs sequence-tied sinks (config.memsinks.method="
                    "'sinks'); the shared sink has modes train, all, dropout"
                )
            gate_F = is_general_F.astype(jnp.float32)
        elif mode == "train":
            return jnp.where(is_general_F, 1.0, self._unit_mask(seq_ids_BxL)).astype(jnp.float32)
        elif mode == "all":
            gate_F = jnp.where(is_general_F, 1.0, self.p_mem)
        elif mode == "dropout":
            gate_F = jnp.where(is_general_F, (self.p_gen + self.p_mem) / self.p_gen, 0.0)
        elif mode == "exclude":
            if excluded_ids is None:
                raise ValueError("memsinks mode 'exclude' needs the ids to exclude")
            covered_F = jnp.concatenate([jnp.zeros(self.general, bool), self.excluded_units(excluded_ids)])
            gate_F = jnp.where(is_general_F, 1.0, jnp.where(covered_F, 0.0, self.p_mem))
        else:
            raise ValueError(f"memsinks mode {mode!r}: expected one of {EVAL_MODES}")
        return jnp.broadcast_to(gate_F.astype(jnp.float32), tuple(seq_ids_BxL.shape) + (self.d_ff,))

    def _unit_mask(self, seq_ids_BxL):
        """[B, L, F] pool masks laid out over all F units (general units' entries are meaningless), computed
        elementwise in F from a per-unit constant."""
        unit_F = np.maximum(np.arange(self.d_ff) - self.general, 0)
        # the per-unit constant carries the hidden axis's sharding, so each device computes its own units
        if self.mask == "paper":
            hi, lo = _ids_as_words(seq_ids_BxL, self.id_width)
            constants_F = sharding.constrain(jnp.asarray(paper_constants(self.pool)[unit_F]), ("act_mlp",))
            mask = _paper_pool_mask(hi, lo, constants_F, self.p_mem)
        elif self.mask == "random":
            units_F = sharding.constrain(jnp.asarray(unit_F, jnp.uint32), ("act_mlp",))
            mask = random_mask(seq_ids_BxL, 0, self.p_mem, units=units_F)
        else:
            raise ValueError(f"config.memsinks.mask={self.mask!r}: expected one of {MASK_KINDS}")
        return sharding.constrain(mask, ("batch", "length", "act_mlp"))

    def excluded_units(self, excluded_ids) -> jax.Array:
        """[U] bool: pool units that any of ``excluded_ids`` [E] switches on in training."""
        ids = excluded_ids if isinstance(excluded_ids, np.ndarray) else jnp.asarray(excluded_ids)
        return self.pool_mask(ids).reshape(-1, self.pool).any(axis=0)


def from_config(config) -> Sinks | None:
    """The run's sink layout (None when ``config.memsinks.method`` is "none"); model shape already resolved."""
    m = config.memsinks
    if m.method == "none":
        return None
    return Sinks(
        d_ff=config.model.d_ff, p_gen=m.p_gen, p_mem=m.p_mem, method=m.method, mask=m.mask, id_width=m.id_width
    )


def set_ids(data, set_name: str) -> np.ndarray:
    """The sequence ids (int32 [N]) of every example of one of the run's sets (``RunData.evaluable``)."""
    stores = data.evaluable()
    if set_name not in stores:
        raise ValueError(f"config.memsinks.exclude_set={set_name!r} is not a set of this run; sets: {sorted(stores)}")
    store = stores[set_name]
    if store.seq_ids is not None:
        raise ValueError(f"set {set_name!r} packs several sequences per row; exclude its ids explicitly")
    return np.asarray(store.sequence_ids(data.pad_id))  # the hash of every row's tokens, as the feeder's
