"""K segmenters of one architecture that predict together: the mean of their softmax outputs.

The co-training mode of train_semi (wsss/semi/cotraining.py) trains one; its checkpoint has kind
`segmenter_ensemble` (models/networks.py), so `commands predict`, val scoring and the Dask engine
load it like any segmenter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.segmenter import build_segmenter


class _Backbones:
    """The members' backbones seen as one, for what the training loop does to `model.backbone`
    (freeze its first blocks, keep its BatchNorm statistics). Not a module: the weights stay
    registered once, under members.K."""

    def __init__(self, backbones: list[nn.Module]):
        self.backbones = backbones

    def frozen_prefix(self, n_blocks: int) -> list[nn.Module]:
        return [m for b in self.backbones for m in b.frozen_prefix(n_blocks)]

    def modules(self):
        for b in self.backbones:
            yield from b.modules()


class Ensemble(nn.Module):
    network_kind = "segmenter_ensemble"   # what its checkpoint config says (models/networks.py)

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def backbone(self) -> _Backbones:
        return _Backbones([m.backbone for m in self.members])

    def new_modules(self) -> list[nn.Module]:
        return [m for member in self.members for m in member.new_modules()]

    def network_settings(self) -> dict:
        """What the checkpoint's network section adds to the segmenter's settings."""
        return {"members": len(self.members)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """log of the members' mean class probabilities at the input's size: a softmax of it (what
        inference takes) gives back exactly that mean."""
        probs = torch.stack([F.softmax(m(images).float(), 1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-8).log()


def build_ensemble(cfg: dict, n_classes: int) -> Ensemble:
    """cfg: the segmenter section plus `members` (K)."""
    return Ensemble([build_segmenter(cfg, n_classes) for _ in range(cfg["members"])])
