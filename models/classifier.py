"""The localizers and `build_localizer`: the CAM classifier (models/cam.py), its group-wise form
(models/group.py) and the ASPP localizer the refiner can use.
"""
from __future__ import annotations

import torch
from torch import nn

from models.cam import NO_DRS, POOLINGS, CAMClassifier, peak_mask, peak_stimulation  # noqa: F401 (re-exported)
from models.group import GroupClassifier
from models.registry import LOCALIZERS
from models.segmenter import Segmenter


@LOCALIZERS.register("aspp")
class ASPPLocalizer(Segmenter):
    """Class maps from a DeepLab-style network: the segmenter with its plain ASPP head.

    The refiner's alternative to a 1x1 conv on the last features: the dilated branches and image
    pooling give each pixel the context to decide whether it belongs to an object's extent. Its
    state dict has the segmenter's keys, which is what lets `segmenter.init: refiner` start from it.
    """

    def __init__(self, n_classes: int, backbone: str = "efficientnet_lite0", pretrained: bool = True,
                 output_stride: int = 16, channels: int = 128, rates=(6, 12, 18)):
        super().__init__(n_classes, backbone=backbone, head="aspp", pretrained=pretrained,
                         output_stride=output_stride, aspp_channels=channels, aspp_rates=rates)

    @classmethod
    def from_config(cls, cfg: dict, n_classes: int) -> "ASPPLocalizer":
        return cls(n_classes, backbone=cfg["backbone"], pretrained=cfg["pretrained"],
                   output_stride=cfg["output_stride"], channels=cfg["aspp_channels"], rates=cfg["aspp_rates"])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(GAP logits N x C, class maps N x C x h x w at the head's stride), like the CAM classifier."""
        maps = self.logits(images)
        return maps.mean(dim=(2, 3)), maps


def build_localizer(cfg: dict, n_classes: int) -> nn.Module:
    """From a localizer section of params.yaml (`head` picks the kind; the classifier's is cam, or
    with `group.enabled` the group-wise classifier of models/group.py)."""
    if (cfg.get("group") or {}).get("enabled"):   # older checkpoints and the refiner: no group section
        return GroupClassifier.from_config(cfg, n_classes)
    return LOCALIZERS.get(cfg.get("head", "cam"), key="refiner.head").from_config(cfg, n_classes)
