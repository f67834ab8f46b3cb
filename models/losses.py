"""Losses by name."""
from __future__ import annotations

import torch.nn.functional as F

from models.registry import LOSSES


@LOSSES.register("multilabel_soft_margin")
def multilabel_soft_margin(logits, targets):
    return F.multilabel_soft_margin_loss(logits, targets)


@LOSSES.register("cross_entropy")
def cross_entropy(logits, labels, drop: float = 0.0, ignore_index: int = 255):
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


@LOSSES.register("small_loss_ce")
def small_loss_cross_entropy(logits, labels, drop: float = 0.2, ignore_index: int = 255):
    """Cross-entropy that, per class in the batch, leaves out the `drop` fraction of that class's
    labelled pixels with the largest loss: on pseudo labels those are mostly the wrong ones, and
    fitting them is what a segmenter does late in training. Per class, so rare classes keep their
    share."""
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    keep = labels != ignore_index
    if drop > 0:
        detached = loss.detach()
        for c in labels[keep].unique():
            of_c = labels == c
            values = detached[of_c]
            n_drop = int(drop * values.numel())
            if n_drop:
                cutoff = values.kthvalue(values.numel() - n_drop).values
                keep &= ~(of_c & (detached > cutoff))
    return loss[keep].mean() if keep.any() else loss.sum() * 0.0
