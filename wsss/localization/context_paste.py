"""Context-decoupling augmentation for the classifier: paste objects cut out by the model's own CAMs
onto other training images, with the object's class added to their tags.

A classifier that sees boats only on water learns water as boat evidence, and its maps (and every
stage after them) then claim the water too. Pasting a boat onto a street breaks that correlation:
the tag is explained by the boat pixels alone. This follows context decoupling augmentation (Su et
al., ICCV 2021), with the object masks taken on the fly from the maps of the previous batch (already
computed by its forward pass, so the augmentation costs no extra forward pass) instead of from a
finished first round of pseudo labels.

Core: `cut_objects` and `paste_objects` (tensors in, tensors out). `ContextPaste` holds the bank of
cut objects between batches and is the classifier's batch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.registry import LOSSES


@dataclass
class CutObject:
    pixels: torch.Tensor   # 3 x h x w, the image inside the object's bounding box
    mask: torch.Tensor     # h x w bool, the object's pixels in that box
    cls: int               # the output index (class - 1)


def cut_objects(images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor, threshold: float,
                rng: np.random.Generator, max_side: float) -> list[CutObject]:
    """One object per image: a random tagged class, its CAM normalised by its maximum and upsampled
    to the image, cut where it exceeds `threshold`. Boxes larger than `max_side` of the image are
    scaled down, so a pasted object cannot cover the image it lands on."""
    out = []
    h, w = images.shape[2:]
    for i in range(images.shape[0]):
        tagged = torch.nonzero(targets[i] > 0.5).flatten().tolist()
        if not tagged:
            continue
        c = int(rng.choice(tagged))
        cam = F.relu(maps[i, c].detach().float())
        if float(cam.max()) <= 0:
            continue
        cam = F.interpolate((cam / cam.max())[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        mask = cam > threshold
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        pixels, box = images[i, :, y0:y1, x0:x1].detach(), mask[y0:y1, x0:x1]
        scale = min(1.0, max_side * h / (y1 - y0), max_side * w / (x1 - x0))
        if scale < 1.0:
            size = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
            pixels = F.interpolate(pixels[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            box = F.interpolate(box[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
        out.append(CutObject(pixels.clone(), box.clone(), c))
    return out


def paste_objects(images: torch.Tensor, targets: torch.Tensor, bank: list[CutObject], prob: float,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image, with probability `prob`, gets one object from `bank` at a random position and
    its class in the targets. Returns (images, targets, pasted: N bool); the inputs are not changed."""
    images, targets = images.clone(), targets.clone()
    pasted = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    if not bank:
        return images, targets, pasted
    h, w = images.shape[2:]
    for i in range(images.shape[0]):
        if rng.random() >= prob:
            continue
        obj = bank[int(rng.integers(len(bank)))]
        oh, ow = obj.mask.shape
        y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
        region = images[i, :, y:y + oh, x:x + ow]
        mask = obj.mask.to(images.device)
        images[i, :, y:y + oh, x:x + ow] = torch.where(mask, obj.pixels.to(region), region)
        targets[i, obj.cls] = 1.0
        pasted[i] = True
    return images, targets, pasted


class ContextPaste:
    """The classifier's batch loss with context-decoupling pasting (cfg: classifier.context_paste).

    Pasting starts after `start_epoch` epochs (the maps of an untrained classifier mark nothing);
    the bank holds the objects cut from the last batch's un-pasted images.
    """

    def __init__(self, cfg: dict, steps_per_epoch: int, seed: int):
        self.prob, self.threshold, self.max_side = cfg["prob"], cfg["mask_threshold"], cfg["max_side"]
        self.start_step = cfg["start_epoch"] * steps_per_epoch
        self.rng = np.random.default_rng(seed)
        self.bank: list[CutObject] = []
        self.step = 0

    def paste(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's (images, the targets its loss uses, pasted: N bool); counts the step."""
        active = self.prob > 0 and self.step >= self.start_step
        self.step += 1
        if active:
            return paste_objects(images, targets, self.bank, self.prob, self.rng)
        return images, targets, torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)

    def refill(self, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor, pasted: torch.Tensor) -> None:
        """The bank: objects cut from this step's un-pasted images (targets: their own tags)."""
        if self.prob > 0 and self.step >= self.start_step:  # the bank is filled one batch before pasting starts
            keep = ~pasted
            self.bank = cut_objects(images[keep], targets[keep], maps[keep], self.threshold, self.rng,
                                    self.max_side)

    def __call__(self, model, batch) -> torch.Tensor:
        images, targets = batch
        images, targets_in, pasted = self.paste(images, targets)
        logits, maps = model(images)
        self.refill(images, targets, maps, pasted)
        return LOSSES.get("multilabel_soft_margin")(logits, targets_in)
