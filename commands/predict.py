"""Segment a folder of new images with the trained segmenter: palette PNGs and overlays.

    python -m commands.predict IN_DIR OUT_DIR [--checkpoint artifacts/segmenter.pt] [--crf]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dataset import images
from stores import labelstore
from config import paths
from labelling.crf import crf_argmax
from stores.atomic import atomic_path
from config.params import load
from training.runtime import resolve_device
from training import checkpoints
from training.segmentation import predict_probs

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def predict_folder(in_dir: Path, out_dir: Path, checkpoint: Path, device: str = "auto", use_crf: bool = False,
                   crf_cfg: dict | None = None, precision: str = "auto") -> int:
    """Like `device`, `precision` belongs to the machine that predicts, not to the checkpoint."""
    files = sorted(p for p in Path(in_dir).iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{in_dir}: no images ({', '.join(sorted(SUFFIXES))})")
    dev = resolve_device(device)
    model, config = checkpoints.load(checkpoint, dev)
    cfg, classes = config["network"], config["classes"]
    with atomic_path(out_dir) as tmp:
        (tmp / "labels").mkdir(parents=True)
        (tmp / "overlays").mkdir()
        for path in tqdm(files, desc="predict", unit="img", dynamic_ncols=True):
            try:
                with Image.open(path) as img:
                    image = np.array(img.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"{path}: not a readable image ({exc})") from None
            probs = predict_probs(model, image, dev, cfg["val_flip"], cfg.get("val_scales", [1.0]), precision)
            labels = (crf_argmax(image, probs, crf_cfg or cfg["crf"]) if use_crf
                      else probs.argmax(0).astype(np.uint8))
            labelstore.palette_png(labels).save(tmp / "labels" / f"{path.stem}.png")
            Image.fromarray(images.blend(image, images.colour_labels(labels), 0.55)).save(
                tmp / "overlays" / f"{path.stem}.png")
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
    return len(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m commands.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("in_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=paths.SEGMENTER)
    ap.add_argument("--crf", action="store_true", help="dense-CRF post-processing (segmenter.crf params)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load(args.params)
    n = predict_folder(args.in_dir, args.out_dir, args.checkpoint, params["segmenter"]["device"], args.crf,
                       params["segmenter"]["crf"], params["segmenter"]["precision"])
    print(f"{n} images -> {args.out_dir}/labels (palette PNGs) and {args.out_dir}/overlays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
