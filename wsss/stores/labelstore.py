"""Label maps per image (uint8, 255 = ignore), packed in Parquet shards."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from wsss.stores import shards
from wsss.stores.packed import Packed

SCHEMA = pa.schema([("id", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("labels", pa.binary())])


def _rows(records: Iterable[tuple[str, np.ndarray]]) -> Iterator[dict]:
    return ({"id": i, "height": lab.shape[0], "width": lab.shape[1], "labels": lab.astype(np.uint8).tobytes()}
            for i, lab in records)


def write(records: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, shard_size: int) -> int:
    return shards.write(_rows(records), SCHEMA, out_dir, shard_size)


def write_part(records: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, index: int) -> int:
    """Shard `index` into an existing folder (a chunk of wsss/scaleout/)."""
    return shards.write_part(_rows(records), SCHEMA, out_dir, index)


def read(in_dir: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    for row in shards.read(in_dir):
        try:
            labels = np.frombuffer(row["labels"], np.uint8).reshape(row["height"], row["width"])
        except (KeyError, TypeError, ValueError) as exc:   # another store's shard, or damaged bytes
            raise shards.ShardError(f"{in_dir}: row {row.get('id')!r} is not a label map ({exc})") from None
        yield row["id"], labels.copy()


class PackedLabels(Packed):
    """{id: label map}, each held compressed (wsss/stores/packed.py): a training stage holds every image's labels."""

    def __init__(self, records: Iterable[tuple[str, np.ndarray]]):
        super().__init__((image_id, None, labels) for image_id, labels in records)

    def __getitem__(self, image_id: str) -> np.ndarray:
        return super().__getitem__(image_id)[1]


def read_dict(in_dir: str | Path) -> PackedLabels:
    """Every image's labels, in stored order, as a read-only mapping that holds them compressed."""
    return PackedLabels(read(in_dir))
