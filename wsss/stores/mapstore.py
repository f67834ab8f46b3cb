"""Class maps per image, packed: quantised uint8 maps at image resolution in Parquet shards.

Row: id, height, width, classes (list of class indices), maps (k*H*W bytes, value/255 = score).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from wsss.stores import shards
from wsss.stores.packed import Packed

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("classes", pa.list_(pa.int16())),
    ("maps", pa.binary()),
])


def quantise(maps: np.ndarray) -> bytes:
    return np.round(np.clip(maps, 0.0, 1.0) * 255).astype(np.uint8).tobytes()


def encode(image_id: str, classes: list[int], maps: np.ndarray) -> dict:
    """One stored row (quantised: a chunk keeps these, not the float maps)."""
    if maps.ndim != 3 or maps.shape[0] != len(classes):
        raise ValueError(f"image {image_id!r}: {len(classes)} classes but maps of shape {maps.shape}")
    return {"id": image_id, "height": maps.shape[1], "width": maps.shape[2], "classes": list(classes),
            "maps": quantise(maps)}


def _encode(records):
    for image_id, classes, maps in records:
        yield encode(image_id, classes, maps)


def write(records: Iterable[tuple[str, list[int], np.ndarray]], out_dir: str | Path, shard_size: int) -> int:
    """records: (id, classes, maps k x H x W in [0, 1]). Returns the number written."""
    return shards.write(_encode(records), SCHEMA, out_dir, shard_size)


def write_part(rows: Iterable[dict], out_dir: str | Path, index: int) -> int:
    """Shard `index` of `encode`d rows into an existing folder (a chunk of wsss/scaleout/)."""
    return shards.write_part(rows, SCHEMA, out_dir, index)


def _decode(row: dict, as_uint8: bool) -> tuple[str, list[int], np.ndarray]:
    k = len(row["classes"])
    maps = np.frombuffer(row["maps"], dtype=np.uint8).reshape(k, row["height"], row["width"])
    return row["id"], row["classes"], (maps.copy() if as_uint8 else maps.astype(np.float32) / 255.0)


def read(in_dir: str | Path, as_uint8: bool = False) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Yields (id, classes, maps k x H x W) in stored order: float32 in [0, 1], or the raw uint8."""
    for row in shards.read(in_dir):
        yield _decode(row, as_uint8)


def read_ids(sources: list[str], ids: list[str], as_uint8: bool = False) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Like `read`, for `ids` only, from the shard files `sources` (wsss.stores.shards.index)."""
    for row in shards.read_ids(sources, ids):
        yield _decode(row, as_uint8)


class PackedMaps(Packed):
    """{id: (classes, uint8 maps k x H x W)}, each held compressed (wsss/stores/packed.py): a training
    stage holds every image's maps (raw, train_aug's 10,582 at 500x375 take 2.0 GB per class plane)."""

    def __init__(self, records: Iterable[tuple[str, list[int], np.ndarray]]):
        super().__init__((image_id, list(classes), maps) for image_id, classes, maps in records)

    def __getitem__(self, image_id: str) -> tuple[list[int], np.ndarray]:
        classes, maps = super().__getitem__(image_id)
        return list(classes), maps


def read_dict(in_dir: str | Path) -> PackedMaps:
    """Every image's (classes, uint8 maps), in stored order, held compressed."""
    return PackedMaps(read(in_dir, as_uint8=True))
