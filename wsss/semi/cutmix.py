"""CutMix consistency with a mean teacher (French, Laine, Aila, Mackiewicz, Finlayson: "Semi-supervised
semantic segmentation needs strong, varied perturbations", BMVC 2020).

The unmasked half of each batch is cut and mixed: image i keeps a random box of itself and takes the
rest from the next unmasked image of the batch. The student (the segmenter being trained) learns on
the mixed images from
- the pseudo labels, cut and mixed the same way (exact: a label map mixes like its image), at
  semi.pseudo_weight, as masks+pseudo does on whole images;
- the teacher's prediction, mixed the same way: the teacher is a moving average of the student's
  weights (never trained by a gradient) that sees the two unmixed images; its class wherever it is at
  least `confidence` sure, else ignored, through the segmenter's own loss, weighted by
  `consistency_weight` and the ramp-up.
The masked half trains on its masks as in masks+pseudo. A mixed image's box edges cut objects
apart, a perturbation that a flip or a scale cannot make, and the student must predict each part as
the teacher does on the whole image.

Predicts with the student: the teacher averages about 1 / (1 - decay) = 100 steps, and the trainer's
own moving average (segmenter.ema_decay 0.99) gained nothing on train_segmenter (docs/results.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from wsss.scoring.metrics import IGNORE
from wsss.semi.losses import Parts, part_loss, rampup, supervised
from wsss.training.segmentation import logits_and_aux


def _towards(decay: float):
    """teacher = decay x teacher + (1 - decay) x student, as multiply-then-add rather than
    get_ema_multi_avg_fn's lerp: the two round differently, and this keeps earlier cutmix runs
    reproducible bit for bit."""
    @torch.no_grad()
    def update(teacher: list[torch.Tensor], student: list[torch.Tensor], _) -> None:
        for t, s in zip(teacher, student):
            t.mul_(decay).add_(s, alpha=1.0 - decay)
    return update


class MeanTeacher(nn.Module):
    """The student segmenter and its teacher (a copy of it, moved towards it after every step, kept
    in eval mode and out of the optimiser); only the student is saved and scored."""

    def __init__(self, segmenter: nn.Module, decay: float):
        super().__init__()
        self.segmenter, self.decay = segmenter, decay
        # use_buffers=False: buffers (BatchNorm statistics) are copied from the student, not averaged
        self.average = AveragedModel(segmenter, multi_avg_fn=_towards(decay), use_buffers=False)
        self.average.update_parameters(segmenter)   # the copying first update: every later one averages
        self.average.requires_grad_(False)
        self.average.eval()

    @property
    def teacher(self) -> nn.Module:
        return self.average.module

    @property
    def backbone(self):
        return self.segmenter.backbone

    def new_modules(self) -> list[nn.Module]:
        return self.segmenter.new_modules()

    def train(self, mode: bool = True) -> "MeanTeacher":
        super().train(mode)
        self.average.eval()   # its BatchNorm statistics follow the student's (update_teacher), never a batch
        return self

    def update_teacher(self) -> None:
        """teacher = decay x teacher + (1 - decay) x student (weights); buffers copied."""
        self.average.update_parameters(self.segmenter)


def box_masks(n: int, hw: tuple[int, int], share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """n masks (n x 1 x H x W, 1 inside): one box each covering `share` of the image, its aspect
    ratio log-uniform in 1/2..2 and its place uniform."""
    h, w = hw
    out = torch.zeros(n, 1, h, w)
    for k in range(n):
        ratio = float(torch.exp((torch.rand(1, generator=generator) * 2 - 1) * 0.6931))
        bh = max(1, min(h, round(h * (share * ratio) ** 0.5)))
        bw = max(1, min(w, round(w * (share / ratio) ** 0.5)))
        top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        out[k, :, top:top + bh, left:left + bw] = 1.0
    return out


def mix(box: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """box (n x 1 x H x W) of a, the rest of b; images or probabilities (n x C x H x W)."""
    return box * a + (1.0 - box) * b


def mix_labels(box: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same mix of label maps (n x H x W)."""
    return torch.where(box[:, 0].bool(), a, b)


def confident_labels(probs: torch.Tensor, confidence: float) -> torch.Tensor:
    """The most probable class of each pixel (n x C x H x W probabilities), IGNORE below `confidence`."""
    top, label = probs.max(1)
    return torch.where(top >= confidence, label, torch.full_like(label, IGNORE))


def teacher_probs(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's class probabilities at the images' size (no gradient)."""
    with torch.no_grad():
        logits, _ = logits_and_aux(teacher, x)
        return F.softmax(F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False), 1)


def batch_loss_fn(cfg: dict, semi: dict, n_masked: int, total_steps: int, parts: Parts):
    """batch_loss for method cutmix: masks + pseudo_weight x mixed pseudo labels + ramped
    consistency_weight x the mixed teacher's confident classes, all on one student forward pass."""
    opts, state = semi["cutmix"], {"step": 0}
    generator = torch.Generator().manual_seed(cfg["seed"])

    def batch_loss(model: MeanTeacher, batch):
        x, labels, index = batch
        model.update_teacher()   # towards the student after the previous step's update
        masked = index < n_masked
        unmasked = ~masked
        x, labels = x.clone(), labels.clone()
        n = int(unmasked.sum())
        consistency_labels = torch.full_like(labels, IGNORE)
        if n > 1:   # one image has no partner to mix with: it trains on its pseudo label alone
            xu, lu = x[unmasked], labels[unmasked]
            partner = torch.roll(torch.arange(n), -1)
            box = box_masks(n, tuple(x.shape[-2:]), opts["box_share"], generator).to(x.device, x.dtype)
            probs = teacher_probs(model.teacher, xu)
            target = confident_labels(mix(box, probs, probs[partner]), opts["confidence"])
            x[unmasked] = mix(box, xu, xu[partner])
            labels[unmasked] = mix_labels(box, lu, lu[partner])
            consistency_labels[unmasked] = target.to(labels.dtype)
            parts.add(confident=float((target != IGNORE).float().mean()))
        logits, aux = logits_and_aux(model.segmenter, x)
        on_masks, on_pseudo = supervised(cfg, logits, labels, masked, unmasked, semi["pseudo_weight"], aux)
        on_teacher = part_loss(cfg, logits, consistency_labels, unmasked)   # 0 when nothing was mixed (all ignored)
        ramp = rampup(state["step"], total_steps, semi["rampup"])
        state["step"] += 1
        parts.add(loss_masks=on_masks.detach(), loss_pseudo=on_pseudo.detach(), loss_consistency=on_teacher.detach())
        return on_masks + semi["pseudo_weight"] * on_pseudo + ramp * opts["consistency_weight"] * on_teacher
    return batch_loss
