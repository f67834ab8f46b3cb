"""Arrays held zlib-compressed in memory, decoded when read: how a training stage holds every
image's labels or maps at once (a label map compresses ~50x, a map ~3.6x on VOC; at train_aug's
10,582 images the raw arrays would take gigabytes, benchmarks/results/label_memory.json)."""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import numpy as np


class Packed(Mapping):
    """{id: (meta, uint8 array)} from (id, meta, array) records; each read is a fresh writable array."""

    def __init__(self, records: Iterable[tuple[str, Any, np.ndarray]]):
        self._packed = {image_id: (meta, array.shape, zlib.compress(np.ascontiguousarray(array, np.uint8).tobytes(), 1))
                        for image_id, meta, array in records}

    def __getitem__(self, image_id: str) -> tuple[Any, np.ndarray]:
        meta, shape, data = self._packed[image_id]
        return meta, np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape).copy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    @property
    def nbytes(self) -> int:
        """The compressed bytes held."""
        return sum(len(data) for *_, data in self._packed.values())
