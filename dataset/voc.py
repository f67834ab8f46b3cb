"""Datasets in the PASCAL VOC layout, with masks or with a tags file, and their manifest.

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png        (optional: palette or grey PNG, 0..C-1 and 255)
    root/ImageSets/Segmentation/<split>.txt
    root/tags.csv                          (optional: `id,name name ...` for images without masks)
    root/classes.txt                       (optional: one name per line, background first; VOC's 21 by default)

Image-level tags come from the mask when there is one, else from tags.csv.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from scoring.metrics import IGNORE

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("tags", pa.list_(pa.int16())),
    ("has_mask", pa.bool_()),
])


class DataError(ValueError):
    """A dataset problem; the message names the file or id."""


def read_classes(root: str | Path) -> list[str]:
    path = Path(root) / "classes.txt"
    if not path.exists():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"{path}: needs background plus at least one class, each name once")
    return names


def read_split(root: str | Path, split: str) -> list[str]:
    path = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.exists():
        raise DataError(f"{path}: split file not found (is data.root a VOC-layout dataset?)")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: the split lists no images")
    return ids


def image_path(root: str | Path, image_id: str) -> Path:
    return Path(root) / "JPEGImages" / f"{image_id}.jpg"


def mask_path(root: str | Path, image_id: str) -> Path:
    return Path(root) / "SegmentationClass" / f"{image_id}.png"


def load_image(root: str | Path, image_id: str) -> np.ndarray:
    """HxWx3 uint8, writable and C-contiguous (pydensecrf needs both)."""
    path = image_path(root, image_id)
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8, copy=True)
    except FileNotFoundError:
        raise DataError(f"image {image_id!r}: {path} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image {image_id!r}: {path} is not a readable image ({exc})") from None


def load_mask(root: str | Path, image_id: str, n_classes: int) -> np.ndarray | None:
    """HxW uint8 class indices (255 = void), or None when the image has no mask."""
    path = mask_path(root, image_id)
    if not path.exists():
        return None
    try:
        with Image.open(path) as img:
            # Palette PNGs hold class indices directly; "P" and "L" both read as indices.
            if img.mode not in ("P", "L"):
                raise DataError(f"mask {image_id!r}: {path} has mode {img.mode}, expected a palette or grey PNG")
            mask = np.array(img, dtype=np.uint8, copy=True)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"mask {image_id!r}: {path} is not a readable PNG ({exc})") from None
    bad = (mask >= n_classes) & (mask != IGNORE)
    if bad.any():
        raise DataError(f"mask {image_id!r}: {path} has label {int(mask[bad].max())} outside 0..{n_classes - 1} and 255")
    return mask


def tags_from_mask(mask: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(mask) if 0 < c < IGNORE]


def read_tags_file(root: str | Path, classes: list[str]) -> dict[str, list[int]]:
    path = Path(root) / "tags.csv"
    if not path.exists():
        return {}
    index = {name: i for i, name in enumerate(classes)}
    tags: dict[str, list[int]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.lower().startswith("id,"):
            continue
        image_id, _, names = line.partition(",")
        unknown = [n for n in names.split() if n not in index or index[n] == 0]
        if unknown:
            raise DataError(f"{path}:{lineno}: image {image_id!r} has unknown class {unknown[0]!r}")
        tags[image_id.strip()] = sorted({index[n] for n in names.split()})
    return tags


def scan(root: str | Path, splits: list[str]) -> tuple[pa.Table, list[str]]:
    """The manifest of the given splits: one row per (image, split), checked for readability."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is not a directory")
    classes = read_classes(root)
    file_tags = read_tags_file(root, classes)
    rows = {name: [] for name in MANIFEST_SCHEMA.names}
    for split in splits:
        for image_id in read_split(root, split):
            path = image_path(root, image_id)
            try:
                with Image.open(path) as img:
                    img.verify()
                    width, height = img.size
            except FileNotFoundError:
                raise DataError(f"image {image_id!r} (split {split}): {path} not found") from None
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DataError(f"image {image_id!r}: {path} is not a readable image ({exc})") from None
            mask = load_mask(root, image_id, len(classes))
            if mask is not None:
                if mask.shape != (height, width):
                    raise DataError(f"mask {image_id!r}: size {mask.shape[::-1]} differs from the image's {(width, height)}")
                tags = tags_from_mask(mask)
            elif image_id in file_tags:
                tags = file_tags[image_id]
            else:
                raise DataError(f"image {image_id!r}: no mask in SegmentationClass/ and no line in tags.csv")
            for key, value in zip(MANIFEST_SCHEMA.names, (image_id, split, width, height, tags, mask is not None)):
                rows[key].append(value)
    table = pa.table(rows, schema=MANIFEST_SCHEMA)
    meta = {"classes": json.dumps(classes), "root": str(root)}
    return table.replace_schema_metadata(meta), classes


def read_manifest(path: str | Path) -> tuple[pa.Table, list[str], Path]:
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return table, json.loads(meta[b"classes"]), Path(meta[b"root"].decode())


def split_rows(table: pa.Table, split: str) -> list[dict]:
    return [row for row in table.to_pylist() if row["split"] == split]
