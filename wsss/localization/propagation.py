"""Refined maps by random walk (refiner.method random_walk): the raw maps of an image walk over the
affinities its AffinityNet predicts (core: wsss/localization/affinity.py). Called per image by the map
export (wsss/localization/cams.py) in place of a CAM network's forward pass."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsss.dataset import images
from wsss.localization.affinity import offsets, pair_affinities, propagate
from wsss.stores import mapstore


@dataclass
class WalkExport:
    sources: list[str]   # the raw map store's shard files (wsss.stores.shards.index)
    cfg: dict            # refiner.affinity

    def load(self, ids: list[str]) -> dict:
        """{id: (classes, maps k x H x W float)} of a chunk's images, read once per chunk."""
        return {i: (c, m) for i, c, m in mapstore.read_ids(self.sources, ids)}

    @torch.no_grad()
    def maps(self, model, image: np.ndarray, classes: list[int], raw: np.ndarray, device) -> np.ndarray:
        cfg, pairs = self.cfg, offsets(self.cfg["radius"])
        if len(classes) == 0:
            return raw
        features = model(images.to_tensor(image)[None].to(device).float())
        affinity = [a[0].float().cpu().numpy() for a in pair_affinities(features, pairs)]
        return propagate(raw, affinity, pairs, tuple(features.shape[-2:]), cfg["beta"], cfg["steps"], cfg["bg_power"])
