"""Label maps per image (uint8, 255 = ignore), packed in Parquet shards."""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from stores import shards

SCHEMA = pa.schema([("id", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("labels", pa.binary())])


def _rows(records: Iterable[tuple[str, np.ndarray]]) -> Iterator[dict]:
    return ({"id": i, "height": lab.shape[0], "width": lab.shape[1], "labels": lab.astype(np.uint8).tobytes()}
            for i, lab in records)


def write(records: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, shard_size: int) -> int:
    return shards.write(_rows(records), SCHEMA, out_dir, shard_size)


def write_part(records: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, index: int) -> int:
    """Shard `index` into an existing folder (a chunk of scaleout/)."""
    return shards.write_part(_rows(records), SCHEMA, out_dir, index)


def read(in_dir: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    for row in shards.read(in_dir):
        yield row["id"], np.frombuffer(row["labels"], np.uint8).reshape(row["height"], row["width"]).copy()


class PackedLabels(Mapping):
    """{id: label map}, each map held zlib-compressed and decoded when read (a fresh writable
    array). A label map compresses tens of times, so a training stage can hold every image's labels:
    raw, train_aug's 10,582 at 500x375 would take 2.0 GB (benchmarks/results/scaling_projection.json)."""

    def __init__(self, records: Iterable[tuple[str, np.ndarray]]):
        self._packed = {image_id: (labels.shape, zlib.compress(np.ascontiguousarray(labels, np.uint8).tobytes(), 1))
                        for image_id, labels in records}

    def __getitem__(self, image_id: str) -> np.ndarray:
        shape, data = self._packed[image_id]
        return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape).copy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    @property
    def nbytes(self) -> int:
        """The compressed bytes held."""
        return sum(len(data) for _, data in self._packed.values())


def read_dict(in_dir: str | Path) -> PackedLabels:
    """Every image's labels, in stored order, as a read-only mapping that holds them compressed."""
    return PackedLabels(read(in_dir))
