"""Compose docs/images/demo_row.png from a finished demo run: image | localization map | pseudo label | prediction.

    python docs/images/make_demo_row.py RUN_DIR [IMAGE_ID] [--out docs/images/demo_row.png]

RUN_DIR is a folder where the demo pipeline ran (`make run` leaves one in the repository root): it reads
data/demo/JPEGImages/<id>.jpg, the map panel reports/maps/<id>.png (its middle third) and two folders the
user commands write there: `wsss label-pngs RUN_DIR/labels_png` and `wsss predict data/demo/JPEGImages
RUN_DIR/predicted` (run them first).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 192
HEADER = 22


def blend(image: Image.Image, labels: Image.Image, alpha: float = 0.6) -> Image.Image:
    """The palette label map over the image; void (255) and background (0) leave the image visible."""
    labels = labels.resize(image.size, Image.NEAREST)
    index = np.asarray(labels)   # palette indices: the class ids
    keep = Image.fromarray(np.where((index == 0) | (index == 255), 0, int(255 * alpha)).astype(np.uint8), "L")
    return Image.composite(labels.convert("RGB"), image, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("image_id", nargs="?", default="demo_train_00002")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("demo_row.png"))
    args = ap.parse_args()
    run, iid = args.run, args.image_id
    image = Image.open(run / "data/demo/JPEGImages" / f"{iid}.jpg").convert("RGB")
    panel = Image.open(run / "reports/maps" / f"{iid}.png").convert("RGB")
    w = panel.width // 3   # the panel: image | maps | ground truth, each with a title bar above
    map_tile = panel.crop((w, 26, 2 * w, 26 + w))
    label = Image.open(run / "labels_png" / f"{iid}.png")
    predicted = Image.open(run / "predicted/labels" / f"{iid}.png")
    tiles = [("image", image), ("localization map", map_tile), ("pseudo label", blend(image, label)),
             ("prediction", blend(image, predicted))]
    row = Image.new("RGB", (len(tiles) * SIDE, SIDE + HEADER), "white")
    draw = ImageDraw.Draw(row)
    for i, (title, tile) in enumerate(tiles):
        row.paste(tile.resize((SIDE, SIDE), Image.BILINEAR), (i * SIDE, HEADER))
        draw.text((i * SIDE + 6, 5), title, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    row.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)   # small for the README
    print(args.out, row.size)


if __name__ == "__main__":
    main()
