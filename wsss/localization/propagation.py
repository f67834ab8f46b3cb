"""Refined maps by random walk (refiner.method random_walk): the raw maps of an image walk over the
affinities its AffinityNet predicts (core: wsss/localization/affinity.py). Called per image by the map
export (wsss/localization/cams.py) in place of a CAM network's forward pass."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsss.dataset import images
from wsss.localization.affinity import walk_features
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
        if len(classes) == 0:   # nothing to walk: skip the network
            return raw
        return walk_features(raw, model(images.to_tensor(image)[None].to(device)), self.cfg)
