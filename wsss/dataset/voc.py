"""Datasets in the PASCAL VOC layout, with masks or with a tags file, and their manifest.

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png        (optional: palette or grey PNG, 0..C-1 and 255)
    root/SegmentationClassAug/<id>.png     (optional: SBD's augmented masks as PNG, for ids that
                                            SegmentationClass lacks; the train_aug split's 10,582)
    root/ImageSets/Segmentation/<split>.txt   (one id a line; DeepLab's `/JPEGImages/<id>.jpg
                                            /SegmentationClassAug/<id>.png` lines also read)
    root/tags.csv                          (optional: `id,name name ...` for images without masks)
    root/Annotations/<id>.xml              (optional: VOC's detection annotations, for images without either)
    root/classes.txt                       (optional: one name per line, background first; VOC's 21 by default)

An image's mask is SegmentationClass/<id>.png, else SegmentationClassAug/<id>.png (VOC's own
masks win where both exist). Image-level tags come from the mask when there is one (the classes
present in it, as DRS and IRN derive train_aug's cls_labels.npy from SegmentationClassAug), else
from tags.csv, else from Annotations/<id>.xml (the classes its objects name). Beyond those tags a
mask only scores. Every image of a training split needs at least one object class:
image-level-tag WSSS learns nothing from an image without one.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from wsss.config.errors import StageError
from wsss.scoring.metrics import IGNORE
from wsss.stores.names import UnsafeIdError, file_name

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


class DataError(StageError, ValueError):
    """A dataset problem; the message names the file or id."""

    kind = "data error"


def read_classes(root: str | Path) -> list[str]:
    path = Path(root) / "classes.txt"
    if not path.exists():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"{path}: needs background plus at least one class, each name once")
    return names


MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")   # where an image's mask is looked for, in order


def _split_id(token: str) -> str:
    """An id from a split line's first token: `2007_000032`, or DeepLab's `/JPEGImages/2007_000032.jpg`."""
    if "/" in token or token.lower().endswith((".jpg", ".jpeg", ".png")):
        return Path(token).stem
    return token


def read_split(root: str | Path, split: str) -> list[str]:
    folder = Path(root) / "ImageSets" / "Segmentation"
    path = folder / f"{split}.txt"
    if not path.exists():
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        have = f"; {folder} has {', '.join(found)}" if found else (
            f"; {folder} has no split files" if folder.is_dir() else f"; there is no {folder} folder")
        hint = (" (train_aug.txt lists SBD's 10,582 augmented training images: docs/data.md, "
                "'Full PASCAL VOC 2012 + SBD')") if split == "train_aug" else " (is data.root a VOC-layout dataset?)"
        raise DataError(f"{path}: split file not found{have}{hint}")
    try:   # ids become file names (JPEGImages/ID.jpg, panels, exported PNGs)
        ids = [file_name(_split_id(line.split()[0]), path) for line in path.read_text().splitlines() if line.strip()]
    except UnsafeIdError as exc:
        raise DataError(str(exc)) from None
    if not ids:
        raise DataError(f"{path}: the split lists no images")
    return ids


def image_path(root: str | Path, image_id: str) -> Path:
    return Path(root) / "JPEGImages" / f"{image_id}.jpg"


def mask_path(root: str | Path, image_id: str) -> Path:
    """SegmentationClass/<id>.png, else SegmentationClassAug/<id>.png where only that exists (the
    first path when neither does)."""
    paths = [Path(root) / sub / f"{image_id}.png" for sub in MASK_DIRS]
    return next((p for p in paths if p.exists()), paths[0])


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


def annotation_path(root: str | Path, image_id: str) -> Path:
    return Path(root) / "Annotations" / f"{image_id}.xml"


def tags_from_annotation(path: Path, classes: list[str]) -> list[int]:
    """The classes a VOC detection annotation names (every <object>, difficult ones too)."""
    index = {name: i for i, name in enumerate(classes)}
    try:
        names = [(obj.findtext("name") or "").strip() for obj in ElementTree.parse(path).getroot().iter("object")]
    except (ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{path}: not a readable annotation ({exc})") from None
    unknown = [n for n in names if index.get(n, 0) == 0]
    if unknown:
        raise DataError(f"{path}: unknown class {unknown[0]!r} (classes: {', '.join(classes[1:])})")
    return sorted({index[n] for n in names})


def read_tags_file(root: str | Path, classes: list[str]) -> dict[str, list[int]]:
    return {image_id: tags for image_id, (_, tags) in _read_tags_lines(root, classes).items()}


def _read_tags_lines(root: str | Path, classes: list[str]) -> dict[str, tuple[int, list[int]]]:
    """{id: (line number, tags)} from root/tags.csv; an id listed twice is an error."""
    path = Path(root) / "tags.csv"
    if not path.exists():
        return {}
    index = {name: i for i, name in enumerate(classes)}
    tags: dict[str, tuple[int, list[int]]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.lower().startswith("id,"):
            continue
        image_id, _, names = line.partition(",")
        image_id = image_id.strip()
        if image_id in tags:
            raise DataError(f"{path}:{lineno}: image {image_id!r} is listed again (first at line {tags[image_id][0]})")
        unknown = [n for n in names.split() if n not in index or index[n] == 0]
        if unknown:
            raise DataError(f"{path}:{lineno}: image {image_id!r} has unknown class {unknown[0]!r}")
        tags[image_id] = (lineno, sorted({index[n] for n in names.split()}))
    return tags


# Images from which scan decodes over worker processes; fewer are decoded in this process. A VOC
# JPEG decodes in about 1.3 ms of CPU, a spawned worker starts (imports) in about 0.5 s: on 2 cores
# the pool breaks even near 1000 images, sooner on more (benchmarks/results/manifest_decode.json: 591 images
# on 2 busy cores, CPU seconds of the stage 1.95 verify-only, 2.80 decoding in process, 3.43 over
# 2 workers).
PARALLEL_FROM = 1000


def _read_entry(root: Path, n_classes: int, item: tuple[str, str]):
    """(width, height, the mask's tags or None) for one (split, id), its image decoded in full, or
    the DataError that describes what is wrong (returned, so the caller reports in split order)."""
    split, image_id = item
    path = image_path(root, image_id)
    try:
        with Image.open(path) as img:
            img.convert("RGB")  # decodes every pixel, as training will: a truncated JPEG fails here
            width, height = img.size
    except FileNotFoundError:
        return DataError(f"image {image_id!r} (split {split}): {path} not found")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return DataError(f"image {image_id!r}: {path} is not a readable image ({exc})")
    try:
        mask = load_mask(root, image_id, n_classes)
    except DataError as exc:
        return exc
    if mask is None:
        return width, height, None
    if mask.shape != (height, width):
        return DataError(f"mask {image_id!r}: size {mask.shape[::-1]} differs from the image's {(width, height)}")
    return width, height, tags_from_mask(mask)


def _read_entries(root: Path, n_classes: int, items: list[tuple[str, str]], workers: int | None) -> list:
    """_read_entry for each item, in order; over `workers` processes (None: one per usable core,
    in this process for fewer than PARALLEL_FROM images)."""
    read = partial(_read_entry, root, n_classes)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = cores if len(items) >= PARALLEL_FROM else 1
    workers = min(workers, len(items))
    if workers <= 1:
        return [read(item) for item in items]
    chunksize = max(1, min(32, len(items) // (4 * workers)))
    # spawn: safe in a process that already runs threads (torch, Prefect); map keeps the order
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(read, items, chunksize=chunksize))


def scan(root: str | Path, splits: list[str], allow_no_objects: tuple[str, ...] | list[str] = (),
         workers: int | None = None) -> tuple[pa.Table, list[str]]:
    """The manifest of the given splits: one row per (image, split), every image decoded in full.

    Each image needs at least one object class, except in the splits named in `allow_no_objects`
    (splits that are only scored, where an image of background alone is a fair test). `workers`:
    processes that decode (None: one per usable core from PARALLEL_FROM images on, else this
    process alone); the manifest is the same for any number.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is not a directory")
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"{root / 'JPEGImages'}: folder not found (data.root must hold the images as "
                        "JPEGImages/<id>.jpg, e.g. VOCdevkit/VOC2012)")
    classes = read_classes(root)
    file_tags = _read_tags_lines(root, classes)
    tags_path = root / "tags.csv"
    items = [(split, image_id) for split in splits for image_id in read_split(root, split)]
    _check_distinct(root, items)
    rows = {name: [] for name in MANIFEST_SCHEMA.names}
    for (split, image_id), entry in zip(items, _read_entries(root, len(classes), items, workers)):
        if isinstance(entry, DataError):
            raise entry
        width, height, tags = entry
        has_mask = tags is not None
        if has_mask:
            empty = f"its mask {mask_path(root, image_id)} has only background"
        elif image_id in file_tags:
            lineno, tags = file_tags[image_id]
            empty = f"{tags_path} line {lineno} lists none"
        elif (xml := annotation_path(root, image_id)).exists():
            tags = tags_from_annotation(xml, classes)
            empty = f"{xml} names no object"
        else:
            raise DataError(f"image {image_id!r}: no mask in {' or '.join(d + '/' for d in MASK_DIRS)}, no line "
                            f"in tags.csv and no Annotations/{image_id}.xml (split {split}{_missing_folders(root, split)})")
        if not tags and split not in allow_no_objects:
            raise DataError(f"image {image_id!r} (split {split}): no object class ({empty}); "
                            "every training image needs at least one")
        for key, value in zip(MANIFEST_SCHEMA.names, (image_id, split, width, height, tags, has_mask)):
            rows[key].append(value)
    table = pa.table(rows, schema=MANIFEST_SCHEMA)
    meta = {"classes": json.dumps(classes), "root": str(root)}
    return table.replace_schema_metadata(meta), classes


def _check_distinct(root: Path, items: list[tuple[str, str]]) -> None:
    """An id once per split and in one split only: a training image scored on val inflates the
    score (SBD's own train + val lists hold VOC val images; train_aug.txt leaves them out)."""
    seen: dict[str, str] = {}
    for split, image_id in items:
        if image_id in seen:
            where = f"twice in {split}" if seen[image_id] == split else f"in both {seen[image_id]} and {split}"
            raise DataError(f"image {image_id!r} is listed {where} ({root / 'ImageSets' / 'Segmentation'}): "
                            "each image belongs to one split, once")
        seen[image_id] = split


def _missing_folders(root: Path, split: str) -> str:
    """The mask folders data.root lacks, said after a missing-mask error (SegmentationClassAug only
    for a split named like SBD's train_aug, or when both are missing)."""
    missing = [str(root / sub) for sub in MASK_DIRS if not (root / sub).is_dir()]
    if len(missing) == 1 and missing[0].endswith("Aug") and "aug" not in split.lower():
        missing = []
    return f"; {' and '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist" if missing else ""


def read_manifest(path: str | Path) -> tuple[pa.Table, list[str], Path]:
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return table, json.loads(meta[b"classes"]), Path(meta[b"root"].decode())


def split_rows(table: pa.Table, split: str) -> list[dict]:
    return [row for row in table.to_pylist() if row["split"] == split]
