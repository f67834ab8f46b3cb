"""`wsss data init`: a folder of images and a tags.csv into the dataset layout the manifest stage reads.

Input, FOLDER:
    *.jpg | *.jpeg | *.png          the images (the file name without its suffix is the image id)
    tags.csv                        one image a row: `image,tags`, the image as a file name or an id,
                                    its tags separated by spaces or semicolons (`cat dog` or `cat;dog`);
                                    an optional header row (`image,tags`), `#` comment rows

Output, OUT (wsss/dataset/voc.py's layout):
    JPEGImages/<id>.jpg             JPEGs copied as they are, PNGs converted (RGB, quality 95)
    ImageSets/Segmentation/{train,val}.txt   a seeded split, `val_share` of the images in val
    tags.csv                        `id,name name ...`
    classes.txt                     background, then the tags' names sorted
"""
from __future__ import annotations

import csv
import random
import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HEADER_FIRST = {"image", "images", "file", "filename", "file_name", "id", "image_id", "path"}
SEPARATORS = re.compile(r"[;\s]+")


class InitError(ValueError):
    """A problem with the input folder or the output folder; the message names the file."""


def read_tags(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, image as written, tag names) per row of tags.csv."""
    if not path.is_file():
        raise InitError(f"{path} not found: the folder needs a tags.csv (`image,tags` rows)")
    rows = []
    with path.open(newline="") as f:
        for lineno, cells in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in cells]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if not rows and cells[0].lower() in HEADER_FIRST and len(cells) > 1 and not any(
                    (path.parent / cells[0]).with_suffix(s).is_file() for s in IMAGE_SUFFIXES):
                continue   # the header row
            tags = [t for cell in cells[1:] for t in SEPARATORS.split(cell) if t]
            rows.append((lineno, cells[0], tags))
    if not rows:
        raise InitError(f"{path}: no rows (expected `image,tags`, e.g. `photo1.jpg,cat dog`)")
    return rows


def find_images(folder: Path) -> dict[str, list[Path]]:
    """{id: image files} of the folder's top level (more than one file for an id is an error later)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, []).append(p)
    return found


def match(folder: Path, images: dict[str, list[Path]], ref: str, where: str) -> Path:
    name = Path(ref).name
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        path = folder / name
        if not path.is_file():
            raise InitError(f"{where}: image {ref!r}: {path} not found")
        return path
    files = images.get(name, [])
    if not files:
        raise InitError(f"{where}: image {ref!r}: no {name}.jpg, .jpeg or .png in {folder}")
    if len(files) > 1:
        raise InitError(f"{where}: image {ref!r} is ambiguous ({', '.join(p.name for p in files)}): name the file")
    return files[0]


def plan(folder: Path) -> tuple[dict[str, Path], dict[str, list[str]], list[str]]:
    """({id: source image}, {id: tags}, images of the folder tags.csv does not list)."""
    if not folder.is_dir():
        raise InitError(f"{folder} is not a folder")
    images = find_images(folder)
    sources: dict[str, Path] = {}
    tags: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for lineno, ref, names in read_tags(folder / "tags.csv"):
        where = f"{folder / 'tags.csv'}:{lineno}"
        path = match(folder, images, ref, where)
        image_id = path.stem
        if re.search(r"[\s,]", image_id):
            raise InitError(f"{where}: image id {image_id!r} has a space or comma: rename the file")
        if image_id in sources:
            raise InitError(f"{where}: image {image_id!r} is listed again (first at line {first[image_id]})")
        if not names:
            raise InitError(f"{where}: image {image_id!r} has no tags (every image needs at least one)")
        if "background" in names:
            raise InitError(f"{where}: 'background' is not a tag (it is class 0, implied)")
        sources[image_id], tags[image_id], first[image_id] = path, list(dict.fromkeys(names)), lineno
    unlisted = sorted(p.name for files in images.values() for p in files if p.stem not in sources)
    return sources, tags, unlisted


def split(ids: list[str], val_share: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val): a seeded shuffle; val gets round(share x n) images, at least one when
    share > 0 and there are two images or more, and train keeps at least one."""
    if not 0 <= val_share < 1:
        raise InitError(f"--val-share must be in [0, 1), got {val_share}")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1 if val_share > 0 and len(order) > 1 else 0, round(val_share * len(order))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def write_image(src: Path, dst: Path) -> bool:
    """The image as dst (a .jpg); True when it was converted from PNG."""
    try:
        with Image.open(src) as img:
            img.verify()
        if src.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(src, dst)
            return False
        with Image.open(src) as img:
            img.convert("RGB").save(dst, "JPEG", quality=95)
        return True
    except (UnidentifiedImageError, OSError) as exc:
        raise InitError(f"{src} is not a readable image ({exc})") from None


def init(folder: str | Path, out: str | Path, val_share: float = 0.2, seed: int = 0,
         overwrite: bool = False) -> dict:
    """Build OUT from FOLDER; returns counts. OUT is written whole, then put in place."""
    folder, out = Path(folder).resolve(), Path(out).resolve()
    if out == folder:
        raise InitError(f"--out {out} is the input folder: choose another (default data/{folder.name})")
    sources, tags, unlisted = plan(folder)
    train, val = split(list(sources), val_share, seed)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InitError(f"{out} exists and is not empty (--overwrite replaces it)")
    classes = ["background", *sorted({t for names in tags.values() for t in names})]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "JPEGImages").mkdir()
        converted = sum(write_image(src, tmp / "JPEGImages" / f"{image_id}.jpg") for image_id, src in sorted(sources.items()))
        sets = tmp / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
        (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
        (tmp / "tags.csv").write_text("id,tags\n" + "".join(f"{i},{' '.join(tags[i])}\n" for i in sorted(tags)))
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"out": str(out), "images": len(sources), "train": len(train), "val": len(val),
            "classes": classes[1:], "converted": converted, "unlisted": unlisted}
