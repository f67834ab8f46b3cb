"""Cycle consistency (Mondal, Agarwal, Dolz, Desrosiers: "Revisiting CycleGAN for semi-supervised
segmentation", 2019): the segmenter S (image -> mask) is one of CycleGAN's two generators; the
other, G, draws an image from a mask. Two PatchGAN discriminators judge masks (S's against real
ones) and images (G's against real ones). Losses, the paper's:

- supervised: S's cross-entropy on the masked images (plus pseudo labels of the rest, weighted),
  and G's L1 against the image of each real mask (the paired, masked images);
- adversarial (least squares, as CycleGAN): S's masks of any image should pass D_mask as real
  masks, G's images of real masks should pass D_img as real images;
- cycle: image -> S -> G -> image (L1), and mask -> G -> S -> mask (cross-entropy).
Images and masks are unpaired for the adversarial and cycle terms: real masks come from the
masked images, images from every image of the batch.

G and the discriminators work at `size` pixels (64 by default) so they cost little on a CPU: G
is four convolutions; S's probabilities are resized down to it, and G's images up to the crop
size for S. In a real mask, ignored pixels (boundaries, crop padding) count as background for G
and D_mask (never for a cross-entropy). The discriminators learn in the same step: their loss
sees S's and G's outputs detached, and S and G see the discriminators through detached weights,
so one backward pass and one optimiser step serve both sides of the game.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from wsss.scoring.metrics import IGNORE
from wsss.semi.losses import Parts, part_loss, rampup, supervised
from wsss.training.segmentation import logits_and_aux


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class Generator(nn.Module):
    """Mask (class probabilities, C x s x s) -> image (3 x s x s, -1..1): four convolutions, one
    down to s/2 and back, so it sees a neighbourhood of about 14 pixels."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(_block(n_classes, width), _block(width, 2 * width, stride=2),
                                 nn.Upsample(scale_factor=2, mode="nearest"), _block(2 * width, width),
                                 nn.Conv2d(width, 3, 3, 1, 1), nn.Tanh())

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.net(masks)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake score per overlapping patch (about 22 pixels across)."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.InstanceNorm2d(2 * width, affine=True), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleModel(nn.Module):
    """S, G, D_img and D_mask as one module for trainer.fit; only S is saved and scored."""

    def __init__(self, segmenter: nn.Module, n_classes: int, size: int, generator_width: int, discriminator_width: int):
        super().__init__()
        self.segmenter, self.size, self.n_classes = segmenter, size, n_classes
        self.generator = Generator(n_classes, generator_width)
        self.d_image = PatchDiscriminator(3, discriminator_width)
        self.d_mask = PatchDiscriminator(n_classes, discriminator_width)

    @property
    def backbone(self):
        return self.segmenter.backbone

    def new_modules(self) -> list[nn.Module]:
        return [*self.segmenter.new_modules(), self.generator, self.d_image, self.d_mask]

    def parameter_counts(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
        return {"generator_params": count(self.generator), "discriminator_params":
                count(self.d_image) + count(self.d_mask)}

    def small_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images 0..255 at size x size, scaled to -1..1 (G's output range)."""
        return F.interpolate(x, size=(self.size, self.size), mode="area") / 127.5 - 1.0

    def small_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """S's class probabilities at size x size."""
        return F.interpolate(F.softmax(logits.float(), 1), size=(self.size, self.size), mode="bilinear",
                             align_corners=False)

    def small_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """Real masks as class probabilities at size x size: one-hot, area-averaged (soft at edges, as
        S's resized outputs are); ignored pixels count as background here."""
        onehot = F.one_hot(torch.where(labels == IGNORE, 0, labels).long(), self.n_classes)
        return F.interpolate(onehot.permute(0, 3, 1, 2).float(), size=(self.size, self.size), mode="area")

    def to_pixels(self, image: torch.Tensor, hw) -> torch.Tensor:
        """G's -1..1 image as S's input: 0..255 at the crop size."""
        return F.interpolate((image + 1.0) * 127.5, size=tuple(hw), mode="bilinear", align_corners=False).clamp(0, 255)


def frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) through detached weights: gradients reach x (the generator side), not the module."""
    return functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, (x,))


def lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores.float(), torch.full_like(scores.float(), 1.0 if real else 0.0))


def losses(model: CycleModel, cfg: dict, semi: dict, x: torch.Tensor, labels: torch.Tensor,
           masked: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every term of one step, by name (before weights): sup_masks, sup_pseudo, gen_paired,
    adv_segmenter, adv_generator, cycle_image, cycle_mask, and the discriminators' d_image, d_mask."""
    s = model.segmenter
    logits, aux = logits_and_aux(s, x)
    sup_masks, sup_pseudo = supervised(cfg, logits, labels, masked, ~masked, semi["pseudo_weight"], aux)
    small_x = model.small_images(x)
    probs = model.small_probs(logits)
    out = {"sup_masks": sup_masks, "sup_pseudo": sup_pseudo,
           "cycle_image": F.l1_loss(model.generator(probs).float(), small_x),        # image -> S -> G -> image
           "adv_segmenter": lsgan(frozen(model.d_mask, probs), True)}              # S's masks look real
    d_mask_fake = lsgan(model.d_mask(probs.detach()), False)
    d_image_real = lsgan(model.d_image(small_x), True)
    zero = logits.sum() * 0.0
    if bool(masked.any()):
        real_masks = model.small_masks(labels[masked])
        drawn = model.generator(real_masks)                                         # mask -> G -> image
        out["gen_paired"] = F.l1_loss(drawn.float(), small_x[masked])
        out["adv_generator"] = lsgan(frozen(model.d_image, drawn), True)
        back = s.logits(model.to_pixels(drawn, x.shape[-2:]))                       # ... -> S -> mask
        everything = torch.ones(int(masked.sum()), dtype=torch.bool, device=x.device)
        out["cycle_mask"] = part_loss(cfg, back, labels[masked], everything)
        out["d_mask"] = 0.5 * (lsgan(model.d_mask(real_masks), True) + d_mask_fake)
        out["d_image"] = 0.5 * (d_image_real + lsgan(model.d_image(drawn.detach()), False))
    else:   # no real mask in this batch: nothing to draw or to compare with
        out.update(gen_paired=zero, adv_generator=zero, cycle_mask=zero, d_mask=zero, d_image=zero)
    return out


def batch_loss_fn(cfg: dict, semi: dict, n_masked: int, total_steps: int, parts: Parts):
    """batch_loss(CycleModel, (images, labels, index)) for trainer.fit: supervised terms at full
    weight, adversarial and cycle terms ramped up, the discriminators' own loss always."""
    w = semi["cyclegan"]
    step = [0]

    def batch_loss(model, batch):
        x, labels, index = batch
        terms = losses(model, cfg, semi, x, labels, index < n_masked)
        ramp = rampup(step[0], total_steps, semi["rampup"])
        step[0] += 1
        loss = (terms["sup_masks"] + semi["pseudo_weight"] * terms["sup_pseudo"]
                + w["generator_weight"] * terms["gen_paired"]
                + ramp * (w["adversarial_weight"] * (terms["adv_segmenter"] + terms["adv_generator"])
                          + w["cycle_image_weight"] * terms["cycle_image"]
                          + w["cycle_mask_weight"] * terms["cycle_mask"])
                + terms["d_mask"] + terms["d_image"])
        parts.add(ramp=ramp, **{k: v.detach() for k, v in terms.items()})
        return loss
    return batch_loss
