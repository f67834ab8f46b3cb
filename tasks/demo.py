"""The embedded demo dataset: deterministic multi-label scenes in the VOC layout, no download.

Each object is a large body (a rotated ellipse in a colour every class shares, with a faint
class-specific stripe texture) carrying a small, vivid, class-specific mark. A classifier learns
the mark first, so plain CAMs sit on the mark; the body is what suppression should spread to.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks.io import atomic_path

CLASSES = ["background", "beetle", "fish", "kite", "robot"]
MARK_COLOURS = np.array([[230, 30, 40], [250, 210, 20], [40, 200, 240], [150, 60, 220]], dtype=np.float32)
STRIPE_ANGLES = np.deg2rad([0.0, 45.0, 90.0, 135.0])
BODY_COLOURS = np.array([[120, 100, 80], [90, 110, 90], [110, 110, 130], [140, 120, 100]], dtype=np.float32)
VOC_PALETTE = None  # filled lazily by palette()


def palette() -> list[int]:
    """The standard PASCAL VOC colour map (256 entries), so demo masks look like VOC's."""
    global VOC_PALETTE
    if VOC_PALETTE is None:
        pal = []
        for i in range(256):
            r = g = b = 0
            c = i
            for j in range(8):
                r |= ((c >> 0) & 1) << (7 - j)
                g |= ((c >> 1) & 1) << (7 - j)
                b |= ((c >> 2) & 1) << (7 - j)
                c >>= 3
            pal += [r, g, b]
        VOC_PALETTE = pal
    return VOC_PALETTE


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _border(region: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within `width` of the region's edge, inside or out (VOC marks these void)."""
    grown, shrunk = region.copy(), region.copy()
    for axis in (0, 1):
        for shift in range(1, width + 1):
            for sign in (1, -1):
                grown |= np.roll(region, sign * shift, axis=axis)
                shrunk &= np.roll(region, sign * shift, axis=axis)
    return grown & ~shrunk


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (HxWx3 uint8 image, HxW uint8 mask with 0..4 and 255 borders)."""
    image = 0.6 * _smooth_noise(rng, size, 4) + 0.25 * 255 * rng.random((1, 1, 3)).astype(np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    n_objects = int(rng.integers(1, 4))
    for _ in range(n_objects):
        cls = int(rng.integers(1, len(CLASSES)))
        a = size * rng.uniform(0.16, 0.3)                 # semi-axes of the body
        b = a * rng.uniform(0.55, 0.9)
        cy, cx = rng.uniform(a * 0.6, size - a * 0.6, size=2)
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        angle = STRIPE_ANGLES[cls - 1]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / 7.0))
        colour = BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))] + rng.normal(0, 12, 3)
        texture = colour[None, None] + 14.0 * stripes[..., None] + rng.normal(0, 6, (size, size, 1))
        image[body] = texture[body]
        # The discriminative mark: a small vivid disc near one end of the body.
        side = rng.choice([-1.0, 1.0])
        mu, mv = side * a * 0.6, rng.uniform(-0.2, 0.2) * b
        my = cy + mu * np.sin(theta) + mv * np.cos(theta)
        mx = cx + mu * np.cos(theta) - mv * np.sin(theta)
        radius = max(2.0, 0.22 * b)
        mark = ((xx - mx) ** 2 + (yy - my) ** 2 <= radius**2) & body
        image[mark] = MARK_COLOURS[cls - 1] + rng.normal(0, 8, (int(mark.sum()), 3))
        mask[body] = cls
    for cls in range(1, len(CLASSES)):
        region = mask == cls
        if region.any():
            mask[_border(region)] = 255
    image += rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(out_dir: str | Path, seed: int, n_train: int, n_val: int, image_size: int) -> None:
    """Write the demo dataset to out_dir atomically (VOC layout + classes.txt)."""
    rng = np.random.default_rng(seed)
    with atomic_path(out_dir) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        for split, count in (("train", n_train), ("val", n_val)):
            ids = [f"demo_{split}_{i:05d}" for i in range(count)]
            for image_id in ids:
                image, mask = render_scene(rng, image_size)
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=92)
                png = Image.fromarray(mask, mode="P")
                png.putpalette(palette())
                png.save(tmp / "SegmentationClass" / f"{image_id}.png")
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / "README.md").write_text(
            f"Demo dataset generated by `python -m tasks demo` (seed {seed}); regenerate, don't edit.\n"
        )


def main(params: dict) -> dict:
    from tasks.paths import DEMO_ROOT

    cfg = params["demo"]
    generate(DEMO_ROOT, cfg["seed"], cfg["n_train"], cfg["n_val"], cfg["image_size"])
    return {"root": str(DEMO_ROOT), "n_train": cfg["n_train"], "n_val": cfg["n_val"]}
