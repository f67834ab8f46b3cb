"""Packed per-image maps: Parquet shards of quantised (uint8) class maps at image resolution.

Row: id, height, width, classes (list of class indices), maps (k*H*W bytes, value/255 = score).
A stage writes all shards into a temporary directory that replaces the old one only when complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import atomic_path

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("classes", pa.list_(pa.int16())),
    ("maps", pa.binary()),
])


def quantise(maps: np.ndarray) -> bytes:
    return np.round(np.clip(maps, 0.0, 1.0) * 255).astype(np.uint8).tobytes()


def write(records: Iterable[tuple[str, list[int], np.ndarray]], out_dir: str | Path, shard_size: int) -> int:
    """records: (id, classes, maps k x H x W in [0, 1]). Returns the number written."""
    count, shard, batch = 0, 0, {name: [] for name in SCHEMA.names}

    def flush(tmp: Path):
        nonlocal shard, batch
        if batch["id"]:
            pq.write_table(pa.table(batch, schema=SCHEMA), tmp / f"part-{shard:05d}.parquet", compression="zstd")
            shard += 1
            batch = {name: [] for name in SCHEMA.names}

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for image_id, classes, maps in records:
            if maps.ndim != 3 or maps.shape[0] != len(classes):
                raise ValueError(f"image {image_id!r}: {len(classes)} classes but maps of shape {maps.shape}")
            for key, value in zip(SCHEMA.names, (image_id, maps.shape[1], maps.shape[2], list(classes), quantise(maps))):
                batch[key].append(value)
            count += 1
            if len(batch["id"]) >= shard_size:
                flush(tmp)
        flush(tmp)
    return count


def read(in_dir: str | Path) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Yields (id, classes, maps k x H x W float32 in [0, 1]) in stored order."""
    shards = sorted(Path(in_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no map shards (run the stage that exports them first)")
    for shard in shards:
        for row in pq.read_table(shard).to_pylist():
            k = len(row["classes"])
            maps = np.frombuffer(row["maps"], dtype=np.uint8).reshape(k, row["height"], row["width"])
            yield row["id"], row["classes"], maps.astype(np.float32) / 255.0
