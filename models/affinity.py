"""AffinityNet's feature network (Ahn & Kwak, CVPR 2018) on a Lite0/ResNet backbone: features of
three levels (strides 4, 8 and the output's), each reduced by a 1x1 conv, resized onto one grid
and mixed into `feature_dim` channels. Pixel-pair affinity is exp(-mean |f_p - f_q|)
(wsss/localization/affinity.py); the network knows no classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import build_backbone, low_level


class AffinityNet(nn.Module):
    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: bool = True, output_stride: int = 16,
                 stride: int = 8, feature_dim: int = 128):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride)
        self.stride = stride
        self.cuts = [low_level(self.backbone, 4), low_level(self.backbone, 8)]   # (blocks to run, channels)
        widths = [(self.cuts[0][1], 32), (self.cuts[1][1], 64), (self.backbone.out_channels, 128)]
        self.reduce = nn.ModuleList(nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(4, cout),
                                                  nn.ReLU(inplace=True)) for cin, cout in widths)
        self.mix = nn.Conv2d(sum(c for _, c in widths), feature_dim, 1)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.reduce, self.mix]

    def grid(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The feature grid of an h x w image: ceil(side / stride), as the backbone's padded convs give."""
        return -(-hw[0] // self.stride), -(-hw[1] // self.stride)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = b.stem(x)
        out, done = [], 0
        for n, _ in self.cuts:
            x = b.blocks[done:n](x)
            out.append(x)
            done = n
        top = b.blocks[done:](x)
        out.append(b.head(top) if hasattr(b, "head") else top)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x feature_dim x grid features for images in 0..255."""
        size = self.grid(images.shape[-2:])
        x = (images / 255.0 - self.mean) / self.std
        parts = [F.interpolate(r(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                 else r(f) for r, f in zip(self.reduce, self.levels(x))]
        return self.mix(torch.cat(parts, 1))


def build_affinity(cfg: dict, n_classes: int = 0) -> AffinityNet:
    """cfg: params.yaml's refiner section (its backbone, output stride and `affinity` settings)."""
    aff = cfg["affinity"]
    return AffinityNet(cfg["backbone"], cfg["pretrained"], cfg["output_stride"], aff["stride"], aff["feature_dim"])
