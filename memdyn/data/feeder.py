"""The feeder: the one path from example stores to the device.

A batch is a dict of global arrays whose leading dimension B is sharded over the data-parallel mesh axes:

  tokens_BxL     int32  token ids; a padding row holds only the pad id
  example_ids_B  int32  the example's id (what per-example records refer to); -1 marks a padding row
  doc_ids_B      int32  the document the example was cut from; -1 in padding rows
  tags_BxL       int8   per-token tags (parts of speech), when the store has them; 0 in padding rows
  seq_ids_BxL    int32  the sequence id of every token (MemSinks' sink masks; segments of block-causal attention):
                        the store's ``seq_ids`` when it packs several documents per row, otherwise a hash of the
                        row's tokens (``sequence_ids``, hashed once per store: ``ExampleStore.sequence_ids``), so
                        every copy of a sequence gets the same id; 0 in padding
  dup_counts_B   int32  how many training rows hold the same tokens (the store's ``dup_counts``); 0 in padding
                        rows and in stores without counts (tracked sets), so every batch has the same fields

Every field has B leading; a new per-example or per-token field is one more entry of ``STORE_FIELDS``. Normal
training steps, inserted updates, tracked-set evaluation, ``memdyn eval`` and extraction all get their batches
from ``Feeder.batch``. Each process reads from the store only the rows its own devices hold, and
``jax.make_array_from_process_local_data`` assembles the global array. The training loop asks for step k + 1's
batch (``Feeder.prefetch``) right after dispatching step k, so it is read and on its way to the devices while
step k runs; ``train_batch(k + 1)`` then hands over that same batch.
"""

from __future__ import annotations

import jax
import numpy as np

from memdyn.data.order import PADDING_ROW, StepOrder
from memdyn.data.store import ExampleStore, sequence_ids

Batch = dict[str, jax.Array]
# store array -> (batch field, device dtype, value in padding rows)
STORE_FIELDS = {
    "tokens": ("tokens_BxL", np.int32, None),
    "example_ids": ("example_ids_B", np.int32, -1),
    "doc_ids": ("doc_ids_B", np.int32, -1),
    "tags": ("tags_BxL", np.int8, 0),
    "seq_ids": ("seq_ids_BxL", np.int32, 0),
    "dup_counts": ("dup_counts_B", np.int32, 0),
}
_INT32 = np.iinfo(np.int32)


class Feeder:
    """Batches of a run's stores, placed with ``sharding`` (a batch-dimension sharding, e.g. P(('data', 'fsdp')))."""

    def __init__(self, sharding: jax.sharding.NamedSharding, pad_id: int, train: ExampleStore, order: StepOrder):
        if len(sharding.spec) > 1:
            raise ValueError(f"the feeder's sharding {sharding.spec} must name the batch dimension only")
        self.sharding, self.pad_id, self.train, self.order = sharding, pad_id, train, order
        self._prefetched: tuple[int, Batch] | None = None  # (step, its batch: placed, or on its way)

    def train_rows(self, step: int) -> np.ndarray:
        """Training-store rows [B] of normal step ``step`` (the same in every process; ``PADDING_ROW`` after the
        real ones when the epoch's batch is smaller than B)."""
        return self.order.rows(step)

    def train_batch(self, step: int) -> Batch:
        """The batch of normal step ``step``: the prefetched one when it is this step's, else read now."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == step:
            return prefetched[1]
        return self.batch(self.train, self.train_rows(step))

    def prefetch(self, step: int) -> None:
        """Reads normal step ``step``'s rows and starts placing them on the devices, for ``train_batch(step)``
        to hand over (one batch deep: a later prefetch replaces it). Call it after dispatching the step before:
        JAX's dispatch is asynchronous, so the host reads and transfers while the devices compute."""
        if self.order is not None:
            self._prefetched = (step, self.batch(self.train, self.train_rows(step)))

    def set_rows(self, store: ExampleStore, batch_size: int) -> list[np.ndarray]:
        """A whole store as row lists [batch_size]; the last is completed with padding rows."""
        return row_batches(np.arange(store.num_examples), batch_size)

    def batch(self, store: ExampleStore, rows_B: np.ndarray) -> Batch:
        """The global batch of store rows ``rows_B`` (``PADDING_ROW`` for padding), sharded on the devices."""
        rows_B = np.asarray(rows_B)
        positions_b = process_batch_positions(self.sharding, len(rows_B))
        local = read_rows(store, rows_B[positions_b], self.pad_id)
        return {
            field: jax.make_array_from_process_local_data(
                self.sharding, value, global_shape=(len(rows_B),) + value.shape[1:]
            )
            for field, value in local.items()
        }


def row_batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` cut into row lists [batch_size]; the last is completed with padding rows."""
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = np.full(batch_size, PADDING_ROW, np.int64)
        real = rows[start : start + batch_size]
        batch[: len(real)] = real
        batches.append(batch)
    return batches


def read_rows(store: ExampleStore, rows_b: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Host arrays of the batch fields for store rows ``rows_b`` (``PADDING_ROW`` for padding), device dtypes."""
    real = rows_b != PADDING_ROW
    read = store.rows(rows_b[real])
    if "seq_ids" not in read:  # one sequence per row: its id, hashed once per store (read on demand: now)
        ids = store.sequence_ids(pad_id)[rows_b[real]] if hasattr(store, "sequence_ids") else None
        ids = sequence_ids(read["tokens"], pad_id) if ids is None else np.asarray(ids, np.int32)
        read["seq_ids"] = np.repeat(ids[:, None], read["tokens"].shape[1], axis=1)
    if "dup_counts" not in read:
        read["dup_counts"] = np.zeros(len(read["tokens"]), np.int32)
    out = {}
    for name, (field, dtype, fill) in STORE_FIELDS.items():
        if name not in read:
            continue
        values = read[name]
        narrowed = np.dtype(dtype) == np.int32 and values.dtype.itemsize > 4  # ids are int64 on disk
        if narrowed and len(values) and (values.min() < _INT32.min or values.max() > _INT32.max):
            raise ValueError(
                f"example store {store.path!r}: {name} do not fit in int32 (range {values.min()}..{values.max()})"
            )
        padded = np.full((len(rows_b),) + values.shape[1:], pad_id if fill is None else fill, dtype)
        padded[real] = values
        out[field] = padded
    return out


def process_batch_positions(sharding: jax.sharding.Sharding, batch_size: int) -> np.ndarray:
    """Positions [b] within the global batch [B] of the rows this process's devices hold, ascending.

    The batch is split over its leading dimension only; devices along the other mesh axes hold copies of the same
    rows, so this is the union of the addressable devices' row slices. Those distinct, equal-sized slices sorted
    by start and concatenated are the layout in which ``jax.make_array_from_process_local_data`` expects a
    process's local rows. One process: every row, 0..B-1.
    """
    slices = sharding.addressable_devices_indices_map((batch_size,)).values()
    row_ranges = sorted({index[0].indices(batch_size) for index in slices})  # (start, stop, step)
    return np.concatenate([np.arange(*r) for r in row_ranges])
