"""The CAM classifier: a backbone, the paper's extra 3x3 convs with DRS slots, and a 1x1 class conv.

Class activation maps are the class conv applied to the final features; the image-level logits
are their spatial mean (GAP), as in CAM and the DRS paper, or (pooling "peaks") the mean of their
local peaks: peak stimulation, from Peak Response Maps (Zhou et al., CVPR 2018). The group-wise
classifier (models/group.py) extends it; models/classifier.py builds either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import build_backbone
from models.drs import Placement, make_drs
from models.registry import LOCALIZERS


NO_DRS = {"mode": "none", "delta": 1.0, "placement": []}
POOLINGS = ("gap", "peaks")


def peak_mask(maps: torch.Tensor, window: int = 3, above_median: bool = True) -> torch.Tensor:
    """Bool N x C x h x w: the local maxima of each map, a pixel being the first maximum of the
    `window` x `window` neighbourhood centred on it (max_pool2d's index, border padded with -inf,
    so a flat plateau gives one peak per corner, not every pixel), kept only where the map is at
    least its own median when `above_median` (the PRM paper's peak filter during training). A
    map's first global maximum is always a peak, so every map has at least one."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"peak window must be a positive odd number, got {window}")
    maps = maps.detach()
    n, c, h, w = maps.shape
    _, index = F.max_pool2d(maps, window, stride=1, padding=window // 2, return_indices=True)
    peaks = index == torch.arange(h * w, device=maps.device).view(1, 1, h, w)
    if above_median:
        peaks &= maps >= maps.flatten(2).median(dim=2).values[..., None, None]
    return peaks


def peak_stimulation(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """N x C: each class map's mean over its local peaks (above its median), instead of its mean
    over all pixels. The peak positions are chosen without gradient, so the loss's gradient reaches
    the map only at those positions: the classifier learns from its instance-like peaks, not from
    every pixel."""
    mask = peak_mask(maps, window).to(maps.dtype)
    return (maps * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp_min(1)


@LOCALIZERS.register("cam")
class CAMClassifier(nn.Module):
    def __init__(self, n_classes: int, backbone: str = "efficientnet_lite0", pretrained: bool = True,
                 output_stride: int = 16, extra_convs: int = 3, extra_channels: int = 512, extra_kernel: int = 3,
                 drs_mode: str = "none", drs_delta: float = 0.55, drs_placement: tuple = ("extra",),
                 pooling: str = "gap", peak_window: int = 3):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"classifier.pooling: {pooling!r} is not one of {list(POOLINGS)}")
        self.pooling, self.peak_window = pooling, peak_window
        placement = Placement(list(drs_placement))

        def drs(channels: int) -> nn.Module:
            return make_drs(drs_mode, channels, drs_delta)

        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride,
                                       drs=drs, placement=placement)
        layers, channels = [], self.backbone.out_channels
        for _ in range(extra_convs):
            layers += [nn.Conv2d(channels, extra_channels, extra_kernel, padding=extra_kernel // 2),
                       nn.ReLU(inplace=False)]
            if placement.extra:
                layers.append(drs(extra_channels))
            channels = extra_channels
        self.extra = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, n_classes, 1, bias=False)
        self.mean = torch.tensor(self.backbone.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.backbone.std).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range float images (N,3,H,W in 0..255) to the backbone's input space."""
        return (images / 255.0 - self.mean.to(images.device)) / self.std.to(images.device)

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (they get the larger learning rate)."""
        return [self.extra, self.classifier]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits N x C, class maps N x C x h x w) for images in 0..255."""
        maps = self.classifier(self.extra(self.backbone(self.normalize(images))))
        if self.pooling == "peaks":
            return peak_stimulation(maps, self.peak_window), maps
        return maps.mean(dim=(2, 3)), maps

    @classmethod
    def config_kwargs(cls, cfg: dict) -> dict:
        """The constructor's arguments from a params.yaml section (or a checkpoint's copy of one)."""
        drs = cfg.get("drs") or NO_DRS  # the refiner's section has no DRS
        return dict(backbone=cfg["backbone"], pretrained=cfg["pretrained"],
                    output_stride=cfg["output_stride"], extra_convs=cfg["extra_convs"],
                    extra_channels=cfg["extra_channels"], extra_kernel=cfg.get("extra_kernel", 3),  # older checkpoints: 3x3
                    drs_mode=drs["mode"], drs_delta=drs["delta"], drs_placement=tuple(drs["placement"]),
                    pooling=cfg.get("pooling", "gap"), peak_window=cfg.get("peak_window", 3))  # older: GAP

    @classmethod
    def from_config(cls, cfg: dict, n_classes: int) -> "CAMClassifier":
        return cls(n_classes=n_classes, **cls.config_kwargs(cfg))

    @torch.no_grad()
    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Non-negative class activation maps at feature resolution."""
        return F.relu(self.forward(images)[1])
