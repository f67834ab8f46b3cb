"""Batches of image groups for group-wise semantic mining (models/group.py): every group's images
share at least one tag, so the co-attention between them has a common object to find.

Each epoch visits the images in a seeded random order; an image not yet placed becomes a group's
anchor, one of its tags that other images have is drawn, and the other members are drawn from the
images with that tag, those not yet placed this epoch first (then, when the tag has too few left,
already placed ones: a rare class's images appear in several groups). An image none of whose tags
any other image has (a class seen once), or with no tags at all, is grouped with copies of itself:
the loader crops and flips each copy on its own, so its group still shares its tags and it still
trains every epoch; `GroupBatchSampler.alone` lists them.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class GroupBatchSampler(Sampler[list[int]]):
    """A DataLoader batch_sampler: each batch is `groups` groups of `size` dataset indices, one group
    after another (GroupClassifier.forward's group_size). About one epoch's worth of images:
    len(tags) // (size x groups) batches. Under torchrun each of `world` ranks takes every
    world-th group of the global batch (groups must split evenly over the ranks)."""

    def __init__(self, tags: list[list[int]], size: int, groups: int, seed: int, rank: int = 0, world: int = 1):
        if size < 1 or groups < 1:
            raise ValueError(f"group size {size} and groups per batch {groups} must be positive")
        if groups % world:
            raise ValueError(f"{groups} groups per batch do not split over {world} processes: the batch size "
                             f"(groups x classifier.group.size) must be a multiple of group size x processes")
        if len(tags) < size * groups:
            raise ValueError(f"{len(tags)} images are fewer than one batch of {groups} groups of {size}")
        self.tags = [sorted(set(t)) for t in tags]
        self.size, self.groups, self.seed, self.rank, self.world = size, groups, seed, rank, world
        holders: dict[int, list[int]] = {}
        for i, ts in enumerate(self.tags):
            for t in ts:
                holders.setdefault(t, []).append(i)
        self.holders = {t: np.array(ids) for t, ids in holders.items()}
        # per image, the tags some other image has too
        self.shared = [[t for t in ts if len(self.holders[t]) > 1] for ts in self.tags]
        self.alone = [i for i, s in enumerate(self.shared) if not s]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.tags) // (self.size * self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_groups(self, epoch: int) -> list[list[int]]:
        """Every group of one epoch, in order (at least len(tags) / size of them)."""
        rng = np.random.default_rng([self.seed, epoch])
        placed = np.zeros(len(self.tags), bool)
        out = []
        for anchor in rng.permutation(len(self.tags)):
            if placed[anchor]:
                continue
            placed[anchor] = True
            if not self.shared[anchor]:
                out.append([int(anchor)] * self.size)
                continue
            pool = self.holders[self.shared[anchor][int(rng.integers(len(self.shared[anchor])))]]
            pool = pool[pool != anchor]
            fresh = rng.permutation(pool[~placed[pool]])[: self.size - 1]
            need = self.size - 1 - len(fresh)
            if need:   # the tag's unplaced images ran out: draw from its images placed already
                rest = np.setdiff1d(pool, fresh)
                rest = rest if len(rest) else pool   # fewer holders than a group: repeat them
                fresh = np.concatenate([fresh, rng.choice(rest, need, replace=len(rest) < need)])
            placed[fresh] = True
            out.append([int(anchor), *map(int, fresh)])
        return out

    def __iter__(self):
        groups = self.epoch_groups(self.epoch)
        self.epoch += 1   # a plain DataLoader never calls set_epoch: the next pass is the next epoch
        for b in range(len(self)):
            batch = groups[b * self.groups:(b + 1) * self.groups]
            yield [i for group in batch[self.rank::self.world] for i in group]
