"""Image-side helpers shared by the stages: resizing, tensors, colouring."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_long(image: np.ndarray, long_side: int, resample=Image.BILINEAR) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 to 3xHxW float in 0..255 (models normalise themselves)."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, fill: int = 127) -> np.ndarray:
    """A size x size crop, padding with `fill` where the image is smaller."""
    h, w = image.shape[:2]
    out = np.full((size, size) + image.shape[2:], fill, dtype=image.dtype)
    y0 = int(rng.integers(0, max(h - size, 0) + 1))
    x0 = int(rng.integers(0, max(w - size, 0) + 1))
    oy = int(rng.integers(0, max(size - h, 0) + 1))
    ox = int(rng.integers(0, max(size - w, 0) + 1))
    crop = image[y0:y0 + size, x0:x0 + size]
    out[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return out


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def colourise(values: np.ndarray) -> np.ndarray:
    """A 0..1 map to an RGB heat map (blue to red), without matplotlib."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 128], [255, 255, 0], [255, 0, 0]], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).astype(np.uint8)
