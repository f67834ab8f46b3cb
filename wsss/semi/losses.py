"""What every semi-supervised method shares: the supervised loss on the masks and on the pseudo
labels, the ramp-up of the unsupervised terms, and per-epoch means of the loss parts."""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from wsss.scoring.metrics import IGNORE
from wsss.dataset.images import grid_labels
from wsss.training.segmentation import label_loss, logits_and_aux


def part_loss(cfg: dict, logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
              aux: torch.Tensor | None = None) -> torch.Tensor:
    """train_segmenter's loss (training/segmentation.label_loss: segmenter.loss with its settings, 255
    ignored, every loss_stride-th pixel, an ocr head's auxiliary logits `aux` included) over the batch
    images where `keep` is true; 0 (with a graph) when none of them has a labelled pixel there."""
    zero = logits.sum() * 0.0
    if not bool(keep.any()):
        return zero
    if not bool((grid_labels(labels[keep], cfg["loss_stride"]) != IGNORE).any()):
        return zero
    return label_loss(cfg)(logits[keep], None if aux is None else aux[keep], labels[keep])


def supervised(cfg: dict, logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor,
               unmasked: torch.Tensor, pseudo_weight: float,
               aux: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on the masked images, loss on the unmasked images' pseudo labels), each a mean over its
    own labelled pixels, so the batch's share of masked images (semi.mask_share) sets how much the
    masks count; the pseudo part is 0 when pseudo_weight is."""
    on_masks = part_loss(cfg, logits, labels, masked, aux)
    on_pseudo = part_loss(cfg, logits, labels, unmasked, aux) if pseudo_weight > 0 else logits.sum() * 0.0
    return on_masks, on_pseudo


def rampup(step: int, total: int, fraction: float) -> float:
    """exp(-5 (1 - t)^2) over the first `fraction` of the steps, then 1 (Laine & Aila's ramp, which
    co-training and most consistency methods use): unsupervised terms wait for a model worth agreeing with."""
    if fraction <= 0:
        return 1.0
    t = min(1.0, step / max(1.0, fraction * total))
    return math.exp(-5.0 * (1.0 - t) ** 2)


class Parts:
    """Per-epoch means of a loss's named parts: trainer.fit's epoch_stats (they reach MLflow)."""

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)

    def add(self, **parts) -> None:
        for name, value in parts.items():
            self.sums[name] += float(value)
            self.counts[name] += 1

    def epoch_stats(self) -> dict:
        out = {name: self.sums[name] / self.counts[name] for name in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


def supervised_batch_loss(cfg: dict, n_masked: int, pseudo_weight: float, parts: Parts):
    """batch_loss for masks_only and masks+pseudo: one segmenter, masks + pseudo_weight x pseudo labels."""

    def batch_loss(model, batch):
        x, labels, index = batch
        masked = index < n_masked
        logits, aux = logits_and_aux(model, x)
        on_masks, on_pseudo = supervised(cfg, logits, labels, masked, ~masked, pseudo_weight, aux)
        parts.add(loss_masks=on_masks.detach(), loss_pseudo=on_pseudo.detach())
        return on_masks + pseudo_weight * on_pseudo
    return batch_loss
