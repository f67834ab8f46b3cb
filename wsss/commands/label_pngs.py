"""Write the packed pseudo labels as VOC palette PNGs (255 = uncertain shows white).

    python -m wsss.commands label-pngs OUT_DIR [--labels artifacts/pseudo_labels] [--overwrite]

OUT_DIR gets one PNG per image and the manifest that wsss/commands/outputs.py keeps; it is replaced
whole, atomically, and only where that loses no one's files.
"""
from __future__ import annotations

from pathlib import Path

from wsss.commands import outputs
from wsss.dataset.images import palette_png
from wsss.stores import labelstore
from wsss.stores.names import file_name

COMMAND = "label-pngs"


def export(labels_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> int:
    """One VOC palette PNG per image into `out_dir`, refusing to lose files (wsss.commands.outputs)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} not found (run the pseudo_labels stage first)")
    n = 0
    with outputs.replacing(out_dir, COMMAND, [labels_dir], overwrite) as tmp:
        tmp.mkdir()
        for image_id, labels in labelstore.read(labels_dir):
            palette_png(labels).save(tmp / f"{file_name(image_id, labels_dir)}.png")
            n += 1
    return n
