"""Write the packed pseudo labels as VOC palette PNGs (255 = uncertain shows white).

    python -m commands label-pngs OUT_DIR [--labels artifacts/pseudo_labels] [--overwrite]

OUT_DIR gets one PNG per image and the manifest that commands/outputs.py keeps; it is replaced
whole, atomically, and only where that loses no one's files.
"""
from __future__ import annotations

from pathlib import Path

from commands import outputs
from stores import labelstore

COMMAND = "label-pngs"


def export(labels_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> int:
    """labelstore.export_pngs into `out_dir`, refusing to lose files (commands.outputs)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} not found (run the pseudo_labels stage first)")
    with outputs.replacing(out_dir, COMMAND, [labels_dir], overwrite) as tmp:
        return labelstore.export_pngs(labels_dir, tmp)
