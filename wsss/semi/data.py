"""Training data of the semi-supervised segmenter: crops that carry their image's index, and
batches that mix masked and unmasked images in a fixed proportion.

Dataset indices 0..n_masked-1 are the masked images, the rest the unmasked ones, so a loss tells
the two apart by index alone (`index < n_masked`).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from wsss.dataset import voc
from wsss.dataset.crops import TrainingCrops
from wsss.scoring.metrics import IGNORE
from wsss.semi.masks import MaskReader
from wsss.training.runtime import _reseed_worker, resolve_device


class SemiLabels:
    """Labels per image: the mask of a masked image (through the guarded reader), the pseudo label of
    any other, or all-ignore when the pseudo labels are not used (pseudo is None)."""

    def __init__(self, masks: MaskReader, pseudo: Mapping | None, sizes: dict[str, tuple[int, int]]):
        self.masks, self.pseudo, self.sizes = masks, pseudo, sizes

    def __call__(self, image_id: str) -> np.ndarray:
        if image_id in self.masks:
            return self.masks(image_id)
        if self.pseudo is None:
            return np.full(self.sizes[image_id], IGNORE, np.uint8)
        if image_id not in self.pseudo:
            raise voc.DataError(f"image {image_id!r} has no pseudo label (artifacts/pseudo_labels)")
        return self.pseudo[image_id]


class SemiCrops(TrainingCrops):
    """TrainingCrops of the masked images, then the unmasked ones; an item is (image, labels, index)."""

    def __init__(self, root, masked: list[str], unmasked: list[str], target, crop: int, resize_long, seed: int):
        super().__init__(root, list(masked) + list(unmasked), target, crop, resize_long, seed)
        self.n_masked = len(masked)

    def __getitem__(self, i: int):
        image, labels = super().__getitem__(i)
        return image, labels, torch.tensor(i)


def masked_per_batch(n_masked: int, n_unmasked: int, batch_size: int, share: float) -> int:
    """How many of a batch's images are masked ones: share x batch, at least one and at most all of
    it when both kinds exist; all (no unmasked images) or none (no masks) otherwise."""
    if n_unmasked == 0:
        return batch_size
    if n_masked == 0:
        return 0
    return int(min(batch_size, max(1, round(share * batch_size))))


class MixedBatches(Sampler):
    """`steps` batches per epoch, each `k` masked images and batch_size - k unmasked ones. Each kind
    is drawn from its own reshuffled cycle, so every masked image comes once before any comes twice
    (a few masks recur every few steps, each time in another random crop and scale)."""

    def __init__(self, n_masked: int, n_unmasked: int, batch_size: int, share: float, steps: int, seed: int):
        if n_masked + n_unmasked == 0:
            raise ValueError("no training images")
        self.n_masked, self.n_unmasked, self.batch_size, self.steps = n_masked, n_unmasked, batch_size, steps
        self.k = masked_per_batch(n_masked, n_unmasked, batch_size, share)
        self.rng = np.random.default_rng(seed)
        self.queues = {True: [], False: []}

    def _draw(self, masked: bool) -> int:
        queue = self.queues[masked]
        if not queue:
            n = self.n_masked if masked else self.n_unmasked
            queue.extend(self.rng.permutation(n).tolist())
        i = queue.pop()
        return i if masked else self.n_masked + i

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield [self._draw(True) for _ in range(self.k)] + [self._draw(False) for _ in range(self.batch_size - self.k)]


def mixed_loader(dataset: SemiCrops, n_unmasked: int, cfg: dict, share: float, epoch_images: int) -> DataLoader:
    """The semi-supervised stage's loader (one process): epoch_images // batch_size mixed batches an epoch."""
    steps = max(1, epoch_images // cfg["batch_size"])
    sampler = MixedBatches(dataset.n_masked, n_unmasked, cfg["batch_size"], share, steps, cfg["seed"])
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg["num_workers"], worker_init_fn=_reseed_worker,
                      pin_memory=resolve_device(cfg.get("device", "cpu")).type == "cuda",
                      generator=torch.Generator().manual_seed(cfg["seed"]))
