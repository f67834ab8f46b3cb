"""Segment a folder of new images with the trained segmenter: palette PNGs and overlays.

    python -m commands predict IN_DIR OUT_DIR [--checkpoint artifacts/segmenter.pt] [--crf] [--overwrite]

OUT_DIR gets labels/*.png (VOC palette), overlays/*.png, classes.txt and the manifest that
commands/outputs.py keeps; it is replaced whole, atomically, and only where that loses no one's files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from commands import outputs
from dataset import images
from labelling.crf import crf_argmax
from training import checkpoints
from training.runtime import resolve_device
from training.segmentation import predict_probs

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
COMMAND = "predict"


class ImageError(ValueError):
    """An input file that is not a readable image; the message names it."""


def input_images(in_dir: Path) -> list[Path]:
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} not found" if not in_dir.exists()
                                else f"input {in_dir} is not a folder")
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{in_dir}: no images ({', '.join(sorted(SUFFIXES))})")
    return files


def predict_folder(in_dir: Path, out_dir: Path, checkpoint: Path, device: str = "auto", use_crf: bool = False,
                   crf_cfg: dict | None = None, precision: str = "auto", overwrite: bool = False) -> int:
    """Like `device`, `precision` belongs to the machine that predicts, not to the checkpoint.

    Refuses (commands.outputs.OutputError) an OUT_DIR inside IN_DIR or holding files this command
    did not write, unless `overwrite`; the inputs and OUT_DIR are checked before the model loads.
    """
    files = input_images(in_dir)
    with outputs.replacing(out_dir, COMMAND, [in_dir], overwrite) as tmp:
        dev = resolve_device(device)
        model, config = checkpoints.load(checkpoint, dev)
        cfg, classes = config["network"], config["classes"]
        (tmp / "labels").mkdir(parents=True)
        (tmp / "overlays").mkdir()
        for path in tqdm(files, desc="predict", unit="img", dynamic_ncols=True):
            try:
                with Image.open(path) as img:
                    image = np.array(img.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise ImageError(f"{path}: not a readable image ({exc})") from None
            probs = predict_probs(model, image, dev, cfg["val_flip"], cfg.get("val_scales", [1.0]), precision)
            labels = (crf_argmax(image, probs, crf_cfg or cfg["crf"]) if use_crf
                      else probs.argmax(0).astype(np.uint8))
            images.palette_png(labels).save(tmp / "labels" / f"{path.stem}.png")
            Image.fromarray(images.blend(image, images.colour_labels(labels), 0.55)).save(
                tmp / "overlays" / f"{path.stem}.png")
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
    return len(files)
