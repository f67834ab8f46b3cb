"""Write the packed PRM instances as per-image PNGs plus JSON.

    python -m wsss.commands instance-pngs OUT_DIR [--instances artifacts/maps/instances.parquet] [--overwrite]

For every image with at least one instance, OUT_DIR gets ID.png, the instance id map (0: no
instance; k: the k-th instance, best score first; where masks overlap the better-scored instance
wins; 8-bit, 16-bit from 256 instances on), and ID.json: {"id", "height", "width", "instances":
[{"id", "class", "class_name", "score", "pixels"}, ...]} with the same ids. OUT_DIR is replaced whole,
atomically, and only where that loses no one's files (wsss/commands/outputs.py), like label-pngs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.commands import outputs
from wsss.stores import instancestore
from wsss.stores.names import file_name

COMMAND = "instance-pngs"


def id_map(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """H x W: 0 where no mask, k + 1 for masks[k]; the earlier (better) mask wins an overlap."""
    ids = np.zeros(shape, np.uint16 if len(masks) >= 256 else np.uint8)
    for k in reversed(range(len(masks))):
        ids[masks[k]] = k + 1
    return ids


def export(store: str | Path, out_dir: str | Path, overwrite: bool = False) -> int:
    """One id PNG and one JSON per image with instances into `out_dir`; returns the image count."""
    store = Path(store)
    if not store.is_file():
        raise FileNotFoundError(f"instance store {store} not found (run export_maps with maps.method: prm first)")
    names = instancestore.classes(store)
    n = 0
    with outputs.replacing(out_dir, COMMAND, [store.parent], overwrite) as tmp:
        tmp.mkdir()
        for image_id, found in instancestore.read(store):
            file_name(image_id, store)
            h, w = found[0][2].shape
            ids = id_map([mask for _, _, mask in found], (h, w))
            Image.fromarray(ids).save(tmp / f"{image_id}.png")
            info = {"id": image_id, "height": h, "width": w, "instances": [
                {"id": k + 1, "class": cls, "class_name": names[cls] if cls < len(names) else None,
                 "score": round(float(score), 5), "pixels": int((ids == k + 1).sum())}
                for k, (cls, score, _) in enumerate(found)]}
            (tmp / f"{image_id}.json").write_text(json.dumps(info, indent=1) + "\n")
            n += 1
    return n
