"""Discriminative Region Suppression (Kim et al., AAAI 2021).

Each channel of a non-negative activation is clamped at delta times its own spatial maximum, so
the most discriminative responses stop dominating and attention spreads to the rest of the object.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FixedDRS(nn.Module):
    """min(relu(x), delta * spatial_max(relu(x))) with a constant delta."""

    def __init__(self, delta: float):
        super().__init__()
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"DRS delta must lie in [0, 1], got {delta}")
        self.delta = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        x_max = x.amax(dim=(2, 3), keepdim=True)
        return torch.minimum(x, self.delta * x_max)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


class LearnableDRS(nn.Module):
    """delta = sigmoid(Linear(GAP(relu(x)))) per image and channel; starts at exactly 0.5.

    The controller's weights start at zero, so every delta begins at sigmoid(0) = 0.5 and training
    moves it per channel from there.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.last_delta: torch.Tensor | None = None  # for logging what the controller chose

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3))))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        x_max = x.amax(dim=(2, 3), keepdim=True)
        delta = self.delta(x)
        self.last_delta = delta.detach()
        return torch.minimum(x, delta * x_max)


def make_drs(mode: str, channels: int, delta: float = 0.55) -> nn.Module:
    """The suppressor for one activation; Identity when DRS is off."""
    if mode == "none":
        return nn.Identity()
    if mode == "fixed":
        return FixedDRS(delta)
    if mode == "learnable":
        return LearnableDRS(channels)
    raise ValueError(f"classifier.drs.mode: unknown mode {mode!r} (none, fixed, learnable)")


class Placement:
    """Where DRS goes: after the extra convs, after the backbone's last activation, inside the
    last N backbone blocks, or everywhere."""

    def __init__(self, items: list[str]):
        self.extra = "extra" in items or "all" in items
        self.head = "head" in items or "all" in items
        blocks = [int(s.split(":")[1]) for s in items if s.startswith("blocks:")]
        self.blocks = 10**6 if "all" in items else (max(blocks) if blocks else 0)

    def in_block(self, index: int, n_blocks: int) -> bool:
        return index >= n_blocks - self.blocks
