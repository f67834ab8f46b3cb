"""Label maps per image (uint8, 255 = ignore), packed in Parquet shards; PNG export for people."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image

from stores import shards
from dataset.images import palette
from stores.atomic import atomic_path

SCHEMA = pa.schema([("id", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("labels", pa.binary())])


def write(records: Iterable[tuple[str, np.ndarray]], out_dir: str | Path, shard_size: int) -> int:
    rows = ({"id": i, "height": lab.shape[0], "width": lab.shape[1], "labels": lab.astype(np.uint8).tobytes()}
            for i, lab in records)
    return shards.write(rows, SCHEMA, out_dir, shard_size)


def read(in_dir: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    for row in shards.read(in_dir):
        yield row["id"], np.frombuffer(row["labels"], np.uint8).reshape(row["height"], row["width"]).copy()


def read_dict(in_dir: str | Path) -> dict[str, np.ndarray]:
    return dict(read(in_dir))


def palette_png(labels: np.ndarray) -> Image.Image:
    png = Image.fromarray(labels.astype(np.uint8), mode="P")
    png.putpalette(palette())
    return png


def export_pngs(in_dir: str | Path, out_dir: str | Path) -> int:
    """VOC palette PNGs, one per image, for people who want to look at the labels."""
    n = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for image_id, labels in read(in_dir):
            palette_png(labels).save(tmp / f"{image_id}.png")
            n += 1
    return n
