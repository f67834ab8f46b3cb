"""DeepLab-style segmentation: a registered backbone plus a registered head (ASPP by default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import build_backbone, low_level
from models.registry import HEADS


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@HEADS.register("aspp")
class ASPPHead(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1x1, dilated 3x3 branches and image pooling."""

    def __init__(self, in_channels: int, n_classes: int, channels: int = 128, rates=(6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels)] +
                                      [_conv_bn_relu(in_channels, channels, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(channels * (len(rates) + 2), channels), nn.Dropout(0.1),
                                     _conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, n_classes, 1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))

    def pixel_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier reads (a second classifier can share them: wsss/semi/dual.py)."""
        return self.context(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pixel_features(x))


@HEADS.register("aspp_plus")
class ASPPPlusHead(ASPPHead):
    """DeepLabV3+: the ASPP context, upsampled to the low-level features' resolution and fused with
    them, so class boundaries follow image edges that stride 16 blurs (the dense CRF's job otherwise)."""

    needs_low_level = True  # forward takes (high, low): the Segmenter taps the backbone for it
    decoder = ("reduce", "fuse", "classifier")  # what an ASPP-only warm start cannot fill (the classifier
                                                # reads the fused features here, not the ASPP output)

    def __init__(self, in_channels: int, n_classes: int, channels: int = 128, rates=(6, 12, 18),
                 low_channels: int = 40, low_reduced: int = 48):
        super().__init__(in_channels, n_classes, channels, rates)
        self.reduce = _conv_bn_relu(low_channels, low_reduced)  # keeps the low level from outvoting the context
        self.fuse = nn.Sequential(_conv_bn_relu(channels + low_reduced, channels, 3),
                                  _conv_bn_relu(channels, channels, 3))

    def pixel_features(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(self.context(x), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([context, self.reduce(low)], 1))

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pixel_features(x, low))


@HEADS.register("deeplabv3")
def torchvision_deeplabv3_head(in_channels: int, n_classes: int, channels: int = 256, rates=(12, 24, 36)):
    """torchvision's DeepLabV3 head (with a ResNet backbone: torchvision's DeepLabV3-ResNet)."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return DeepLabHead(in_channels, n_classes, atrous_rates=tuple(rates))


class Segmenter(nn.Module):
    def __init__(self, n_classes: int, backbone: str = "efficientnet_lite0", head: str = "aspp",
                 pretrained: bool = True, output_stride: int = 16, aspp_channels: int = 128, aspp_rates=(6, 12, 18),
                 low_level_stride: int = 8):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=pretrained, output_stride=output_stride)
        head_class = HEADS.get(head, key="segmenter.head")
        extra = {}
        self.low_level_stride = low_level_stride if getattr(head_class, "needs_low_level", False) else None
        if self.low_level_stride:
            extra["low_channels"] = low_level(self.backbone, low_level_stride)[1]
        self.head = head_class(self.backbone.out_channels, n_classes, channels=aspp_channels,
                               rates=tuple(aspp_rates), **extra)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)

    def new_modules(self) -> list[nn.Module]:
        return [self.head]

    def logits_and_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(class logits at the head's own stride, the head's auxiliary logits or None), for images
        in 0..255. Heads with an auxiliary output (ocr: its soft object regions) have
        `forward_with_aux`; the training loss supervises both (wsss/training/segmentation.py)."""
        return self.head_outputs(self.head, self.head_inputs(images))

    def head_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a head takes, for images in 0..255: the backbone's features (and, for a head with a
        decoder, the low-level ones). Split out so a second head (wsss/semi/dual.py) shares the pass."""
        x = (images / 255.0 - self.mean) / self.std
        if self.low_level_stride:
            low, high = self.backbone.forward_levels(x, self.low_level_stride)
            return high, low
        return (self.backbone(x),)

    @staticmethod
    def head_outputs(head: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits or None) of `head` on head_inputs."""
        if hasattr(head, "forward_with_aux"):
            return head.forward_with_aux(*inputs)
        return head(*inputs), None

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits at the head's own stride, for images in 0..255 (inference: no auxiliary output)."""
        return self.logits_and_aux(images)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits at the input's size, for images in 0..255."""
        return F.interpolate(self.logits(images), size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(cfg: dict, n_classes: int) -> Segmenter:
    return Segmenter(n_classes, backbone=cfg["backbone"], head=cfg["head"], pretrained=cfg["pretrained"],
                     output_stride=cfg["output_stride"], aspp_channels=cfg["aspp_channels"],
                     aspp_rates=cfg["aspp_rates"],
                     low_level_stride=cfg.get("low_level_stride", 8))  # absent from checkpoints saved before it
