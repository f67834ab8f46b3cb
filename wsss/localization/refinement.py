"""Localization-map refinement learning (DRS paper, section 3.3): a second network learns to
reproduce the exported maps from the image alone. The target for each pixel is the map value of
its argmax class, other channels zero (MSE). Because it must explain the maps from appearance, it
fills holes and drops isolated noise."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsss.dataset import images


def refinement_target(maps: np.ndarray, classes: list[int], n_fg: int) -> np.ndarray:
    """k x H x W maps of the tagged classes -> n_fg x H x W: each pixel keeps only its argmax class."""
    h, w = maps.shape[1:]
    target = np.zeros((n_fg, h, w), maps.dtype)
    if len(classes) == 0:
        return target
    winner = maps.argmax(0)
    peak = np.take_along_axis(maps, winner[None], 0)[0]
    for j, c in enumerate(classes):
        target[c - 1] = np.where(winner == j, peak, 0)
    return target


def resized_maps(maps_u8: np.ndarray, size_hw) -> np.ndarray:
    """Stored uint8 maps (k x H x W) as floats in [0, 1], bilinearly resized to size_hw."""
    return F.interpolate(torch.from_numpy(maps_u8.astype(np.float32) / 255)[None], size=tuple(size_hw),
                         mode="bilinear", align_corners=False)[0].numpy()


class MapTarget:
    """The refinement target of stored maps (uint8, from wsss.stores.mapstore) for
    `wsss.dataset.crops.TrainingCrops`: resized to the rescaled image, then flipped and cropped with it."""

    dense, fill = True, 0.0

    def __init__(self, maps: dict[str, tuple[list[int], np.ndarray]], n_fg: int):
        self.maps, self.n_fg = maps, n_fg

    def load(self, image_id: str, source_hw, size_hw) -> np.ndarray:
        classes, maps_u8 = self.maps[image_id]
        return refinement_target(resized_maps(maps_u8, size_hw), classes, self.n_fg).transpose(1, 2, 0)

    def to_tensor(self, target: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(target.transpose(2, 0, 1).copy())


def refinement_loss(model, batch):
    x, target = batch
    _, maps = model(x)
    return F.mse_loss(images.upsample(maps, target.shape[-2:]), target)
