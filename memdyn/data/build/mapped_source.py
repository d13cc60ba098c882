"""A seqio data source whose datasets are another source's, transformed per split."""

from __future__ import annotations

from collections.abc import Callable

import memdyn.tensorflow_cpu  # noqa: F401  (TensorFlow on the CPU only: hides the GPUs before it makes a device)
import seqio
import tensorflow as tf


class MappedSource(seqio.DataSource):
    """Yields ``fn(inner.get_dataset(split, ...), split)``; shards, splits and order are the inner source's."""

    def __init__(self, inner: seqio.DataSource, fn: Callable[[tf.data.Dataset, str], tf.data.Dataset]):
        super().__init__(splits=inner.splits, caching_permitted=False)
        self._inner, self._fn = inner, fn

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str):
        return self._inner.list_shards(split)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, *,
                    sequence_length=None, use_cached=False, num_epochs=1) -> tf.data.Dataset:
        return self._fn(self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info),
                        split)
