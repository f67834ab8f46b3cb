"""Losses by name."""
from __future__ import annotations

import torch.nn.functional as F

from models.registry import LOSSES


@LOSSES.register("multilabel_soft_margin")
def multilabel_soft_margin(logits, targets):
    return F.multilabel_soft_margin_loss(logits, targets)
