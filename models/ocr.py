"""Object-contextual representations (Yuan, Chen & Wang, ECCV 2020: "OCRNet") as a segmenter head.

A pixel's class is read from its own features plus a summary of the *object regions* of the image:
1. soft object regions: an auxiliary head predicts class logits M (K x h x w) from the backbone
   features; it is trained with the same labels (`aux_weight` x loss, wsss/training/segmentation.py);
2. region representations: per class k, the pixel representations weighted by softmax_pixels(M_k),
   i.e. one feature vector per class region of *this* image (K x C);
3. pixel-region relation: for every pixel, softmax over the K regions of the scaled dot product of
   its query projection and each region's key projection;
4. object-contextual representation: the relation-weighted sum of the (value-projected) regions,
   concatenated with the pixel representation and fused by a 1x1 conv, then the classifier.

Compared with ASPP's fixed dilated neighbourhoods, the context of a pixel is the pooled feature of
the object it most likely belongs to, which is what the paper credits for its gain. Sizes follow the
segmenter's `aspp_channels` (the paper's 512 / 256 keys are too slow for 2 CPU cores).

`ocr_plus` adds the DeepLabV3+ decoder of `aspp_plus` after the fusion (the object-contextual
features upsampled to the backbone's `low_level_stride` block output and fused with it), so the two
decoders compare like with like.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import HEADS
from models.segmenter import _conv_bn_relu


class ObjectContext(nn.Module):
    """Steps 3-4: the pixel-region relation and the object-contextual representation (the paper's
    ObjectAttentionBlock: two-layer query/key transforms, one-layer value and output transforms)."""

    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.query = nn.Sequential(_conv_bn_relu(channels, key_channels), _conv_bn_relu(key_channels, key_channels))
        self.key = nn.Sequential(_conv_bn_relu(channels, key_channels), _conv_bn_relu(key_channels, key_channels))
        self.value = _conv_bn_relu(channels, key_channels)
        self.up = _conv_bn_relu(key_channels, channels)
        self.scale = key_channels ** -0.5

    def relation(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """B x (h*w) x K: each pixel's softmax over the K regions. pixels: B x C x h x w; regions:
        B x C x K x 1 (regions kept as a 1-wide image so the 1x1 conv-bn-relu transforms apply)."""
        q = self.query(pixels).flatten(2).transpose(1, 2)        # B x hw x D
        k = self.key(regions).flatten(2)                          # B x D x K
        return torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        relation = self.relation(pixels, regions)                 # B x hw x K
        v = self.value(regions).flatten(2).transpose(1, 2)        # B x K x D
        context = torch.bmm(relation, v).transpose(1, 2)          # B x D x hw
        return self.up(context.reshape(context.shape[0], -1, *pixels.shape[-2:]))


def region_representations(pixels: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """Step 2: B x C x K x 1; region k = sum over pixels of softmax_pixels(M_k) * pixel features."""
    weights = torch.softmax(region_logits.flatten(2).float(), dim=-1).to(pixels.dtype)   # B x K x hw, over pixels
    regions = torch.bmm(weights, pixels.flatten(2).transpose(1, 2))                       # B x K x C
    return regions.transpose(1, 2).unsqueeze(-1)


@HEADS.register("ocr")
class OCRHead(nn.Module):
    """Pixel representation (3x3 conv-bn-relu), soft object regions (auxiliary head), object context,
    fusion, classifier. `forward` gives the class logits only; `forward_with_aux` also the auxiliary
    region logits, which the training loss supervises (Segmenter.logits_and_aux)."""

    # A warm start from the refiner (ASPP head) can fill none of this head: it takes the backbone only
    # (wsss/training/segmentation.py, warm_start keeps these fresh).
    decoder = ("pixels", "aux", "context", "fuse", "classifier")

    def __init__(self, in_channels: int, n_classes: int, channels: int = 128, rates=(), key_channels: int = 0):
        super().__init__()   # rates: the ASPP's, unused here (the registry builds every head alike)
        key_channels = key_channels or max(channels // 2, 1)
        self.pixels = _conv_bn_relu(in_channels, channels, 3)
        self.aux = nn.Sequential(_conv_bn_relu(in_channels, channels), nn.Conv2d(channels, n_classes, 1))
        self.context = ObjectContext(channels, key_channels)
        self.fuse = nn.Sequential(_conv_bn_relu(2 * channels, channels), nn.Dropout(0.05))
        self.classifier = nn.Conv2d(channels, n_classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented representations B x C x h x w, auxiliary region logits B x K x h x w)."""
        aux = self.aux(x)
        pixels = self.pixels(x)
        context = self.context(pixels, region_representations(pixels, aux))
        return self.fuse(torch.cat([context, pixels], 1)), aux   # the paper's order: [context, pixel]

    def forward_with_aux(self, x: torch.Tensor, low: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        features, aux = self.features(x)
        return self.classifier(features), aux

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_aux(x, low)[0]


@HEADS.register("ocr_plus")
class OCRPlusHead(OCRHead):
    """OCR, then aspp_plus's decoder: the object-contextual features upsampled to the low-level block
    output (1x1-reduced to `low_reduced` channels) and fused with it by two 3x3 convs; the classifier
    reads the fused features at `low_level_stride`. The auxiliary regions stay at the backbone's stride."""

    needs_low_level = True
    decoder = OCRHead.decoder + ("reduce", "refine")

    def __init__(self, in_channels: int, n_classes: int, channels: int = 128, rates=(), key_channels: int = 0,
                 low_channels: int = 40, low_reduced: int = 48):
        super().__init__(in_channels, n_classes, channels, rates, key_channels)
        self.reduce = _conv_bn_relu(low_channels, low_reduced)
        self.refine = nn.Sequential(_conv_bn_relu(channels + low_reduced, channels, 3),
                                    _conv_bn_relu(channels, channels, 3))

    def forward_with_aux(self, x: torch.Tensor, low: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if low is None:
            raise ValueError("segmenter.head ocr_plus: needs the backbone's low-level features (forward(high, low))")
        features, aux = self.features(x)
        up = F.interpolate(features, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.refine(torch.cat([up, self.reduce(low)], 1))), aux
