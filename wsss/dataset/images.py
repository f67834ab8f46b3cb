"""Image-side helpers shared by the stages: resizing, tensors, colouring (no device logic)."""
from __future__ import annotations

import functools

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


def crop_box(h: int, w: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, x0, oy, ox): where to cut from the source and where to paste it in a size x size canvas."""
    return (int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1)),
            int(rng.integers(0, max(size - h, 0) + 1)), int(rng.integers(0, max(size - w, 0) + 1)))


def apply_crop(array: np.ndarray, box: tuple[int, int, int, int], size: int, fill) -> np.ndarray:
    """Cut `box` (from crop_box) out of an H x W (x C) array, padding with `fill`."""
    y0, x0, oy, ox = box
    out = np.full((size, size) + array.shape[2:], fill, dtype=array.dtype)
    crop = array[y0:y0 + size, x0:x0 + size]
    out[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return out


def random_long_side(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """The training rescale: a long side drawn uniformly from [lo, hi]."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def flip_and_crop(rng: np.random.Generator, size: int, image: np.ndarray,
                  *targets: tuple[np.ndarray, float]) -> list[np.ndarray]:
    """One random horizontal flip and size x size crop, applied alike to an image (padded with
    grey 127) and to dense targets of its size, each given as (array, fill)."""
    arrays = [image, *(t for t, _ in targets)]
    if rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    box = crop_box(*image.shape[:2], size, rng)
    fills = [127, *(f for _, f in targets)]
    return [apply_crop(np.ascontiguousarray(a), box, size, f) for a, f in zip(arrays, fills)]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def grid_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """Every `stride`-th pixel of the labels, the centre of each stride x stride cell (nearest, so 255 stays 255)."""
    return labels[:, stride // 2::stride, stride // 2::stride]


_HEAT_STOPS = ((0, 0, 128), (0, 128, 255), (0, 255, 128), (255, 255, 0), (255, 0, 0))   # navy .. red, evenly spaced


@functools.cache
def _heat_map():
    from matplotlib.colors import LinearSegmentedColormap   # imported here: only the panels colour maps

    # 1024 entries: within one level per channel of the stops' exact linear ramp
    return LinearSegmentedColormap.from_list("heat", np.array(_HEAT_STOPS) / 255, N=1024)


def colourise(values: np.ndarray) -> np.ndarray:
    """A 0..1 map to an RGB heat map (blue to red); values outside 0..1 are clipped."""
    rgba = np.asarray(_heat_map()(values, bytes=True))   # a 0-d value gives a tuple
    return np.ascontiguousarray(rgba[..., :3])


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).astype(np.uint8)


_PALETTE: list[int] = []


def palette() -> list[int]:
    """The standard PASCAL VOC colour map (256 entries x RGB), for label PNGs: the devkit's
    bit-interleaved label palette, which no plotting library ships, so it is built here."""
    if not _PALETTE:
        for i in range(256):
            r = g = b = 0
            c = i
            for j in range(8):
                r |= ((c >> 0) & 1) << (7 - j)
                g |= ((c >> 1) & 1) << (7 - j)
                b |= ((c >> 2) & 1) << (7 - j)
                c >>= 3
            _PALETTE.extend([r, g, b])
    return _PALETTE


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """HxW class indices to HxWx3 VOC colours."""
    return np.array(palette(), np.uint8).reshape(-1, 3)[labels]


def palette_png(labels: np.ndarray) -> Image.Image:
    """A label map as a VOC palette PNG (what VOC's SegmentationClass files are)."""
    png = Image.fromarray(labels.astype(np.uint8), mode="P")
    png.putpalette(palette())
    return png
