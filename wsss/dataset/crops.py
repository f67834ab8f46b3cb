"""The one training dataset: an image at a random scale, flipped and cropped, with its target.

Classifier, refiner and segmenter differ only in the target (`Target`): multi-hot tags, a map
regression target, or a label map. A dense target is resized with the image and shares its flip
and crop, so the two stay aligned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.dataset import images, voc


class Target(Protocol):
    dense: bool      # an H x W (x C) array that is flipped and cropped with the image
    fill: float      # the value of padded pixels (dense targets)

    def load(self, image_id: str, source_hw: tuple[int, int], size_hw: tuple[int, int]):
        """The target of one image; dense targets at size_hw (the rescaled image), given the
        image's own size source_hw."""

    def to_tensor(self, target) -> torch.Tensor: ...


class TrainingCrops(Dataset):
    def __init__(self, root: str | Path, ids: list[str], target: Target, crop: int, resize_long: tuple[int, int],
                 seed: int):
        self.root, self.ids, self.target, self.crop, self.resize = root, ids, target, crop, tuple(resize_long)
        self.rng = np.random.default_rng(seed)  # replaced per loader worker (wsss.training.runtime)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image = voc.load_image(self.root, image_id)
        source_hw = image.shape[:2]
        image = images.resize_long(image, images.random_long_side(self.rng, self.resize))
        target = self.target.load(image_id, source_hw, image.shape[:2])
        if self.target.dense:
            image, target = images.flip_and_crop(self.rng, self.crop, image, (target, self.target.fill))
        else:
            (image,) = images.flip_and_crop(self.rng, self.crop, image)
        return images.to_tensor(image), self.target.to_tensor(target)
