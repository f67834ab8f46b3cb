"""Instance masks, packed: one Parquet file, one row per instance.

Row: id (image id), instance (0.. within the image, best score first), class (dataset index),
score, height, width, mask (the H x W boolean mask as numpy.packbits bytes, row-major). The class
names travel in the file's schema metadata. Written atomically (wsss.stores.atomic.write_parquet).
"""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wsss.stores.atomic import write_parquet

FILE = "instances.parquet"   # its name inside the map store (artifacts/maps/)

FIELDS = [
    ("id", pa.string()),
    ("instance", pa.int32()),
    ("class", pa.int16()),
    ("score", pa.float32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("mask", pa.binary()),
]


def pack(mask: np.ndarray) -> bytes:
    return np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes()


def unpack(data: bytes, height: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def rows(image_id: str, found: list[tuple[int, float, np.ndarray]]) -> list[dict]:
    """One image's instances (class, score, H x W bool mask) as packed rows, in the order given."""
    return [{"id": image_id, "instance": k, "class": int(cls), "score": float(score),
             "height": mask.shape[0], "width": mask.shape[1], "mask": pack(mask)}
            for k, (cls, score, mask) in enumerate(found)]


def write_rows(packed: list[dict], path: str | Path, classes: list[str]) -> int:
    """Rows from `rows` into one Parquet file at `path`, atomically; returns the count."""
    schema = pa.schema(FIELDS, metadata={"classes": json.dumps(list(classes))})
    write_parquet(pa.Table.from_pylist(packed, schema=schema), path)
    return len(packed)


def write(records: Iterable[tuple[str, list[tuple[int, float, np.ndarray]]]], path: str | Path,
          classes: list[str]) -> int:
    """records: (image id, [(class, score, H x W bool mask), ...]); returns the instances written."""
    return write_rows([r for image_id, found in records for r in rows(image_id, found)], path, classes)


def classes(path: str | Path) -> list[str]:
    """The class names the file was written with (index = class)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"classes", b"[]"))


def read(path: str | Path) -> Iterator[tuple[str, list[tuple[int, float, np.ndarray]]]]:
    """Yields (image id, [(class, score, bool mask), ...]) per image with instances, in stored order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instance store {path} not found (export maps with maps.method: prm first)")
    for image_id, rows in groupby(pq.read_table(path).to_pylist(), key=lambda r: r["id"]):
        yield image_id, [(r["class"], r["score"], unpack(r["mask"], r["height"], r["width"])) for r in rows]
