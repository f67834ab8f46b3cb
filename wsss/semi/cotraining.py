"""Co-training ensemble (Peng, Estrada, Pedersoli, Desrosiers: "Deep co-training for semi-supervised
image segmentation", Pattern Recognition 2020; after Qiao et al., ECCV 2018).

K segmenters (models/ensemble.py) learn together:
- supervised: member k on the masks of its own seeded subset of the masked images (a masked image
  outside its subset is an unlabelled one to it), plus the pseudo labels of the unmasked images;
- agreement: the Jensen-Shannon divergence of the members' class distributions, pixel by pixel,
  H(mean_k p_k) - mean_k H(p_k): members exchange what they predict on images they have no mask for;
- diversity: for each member i an adversarial image (FGSM, one step of eps in pixel values against
  i's own prediction), on which every other member j must still predict what i predicts on the clean
  image (cross-entropy). Members that agree on natural images but are not fooled by the same
  perturbations stay different views of the data, which co-training needs: identical members would
  agree trivially and the agreement would teach nothing.

Prediction: the ensemble's mean softmax (Ensemble.forward), chosen over a distilled single model
because distilling would cost another full training on this CPU, while averaging the K members is
what their diversity was trained for (docs/semi-supervised.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.ensemble import Ensemble
from models.segmenter import build_segmenter
from wsss.semi.losses import Parts, rampup, supervised
from wsss.training.segmentation import logits_and_aux


def member_subsets(n_masked: int, members: int, fraction: float, seed: int) -> list[list[int]]:
    """Each member's masked images (dataset indices): round(fraction x n) of them (at least one),
    a window of a seeded permutation that starts n / K further on for each member, so the members'
    subsets differ (given K <= n) and together cover every mask (given fraction x K >= 1)."""
    if n_masked == 0:
        return [[] for _ in range(members)]
    size = min(n_masked, max(1, round(fraction * n_masked)))
    order = np.random.default_rng(seed).permutation(n_masked)
    return [sorted(order[(round(k * n_masked / members) + np.arange(size)) % n_masked].tolist())
            for k in range(members)]


def build_members(cfg: dict, n_classes: int, members: int) -> Ensemble:
    """K segmenters of the segmenter section's architecture; their new layers start from different
    random weights (one RNG stream, drawn in turn)."""
    return Ensemble([build_segmenter(cfg, n_classes) for _ in range(members)])


def jensen_shannon(logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over pixels of H(mean p_k) - mean H(p_k) (nats): 0 when the members agree."""
    probs = [F.softmax(lg.float(), 1) for lg in logits]
    logs = [F.log_softmax(lg.float(), 1) for lg in logits]
    mean = torch.stack(probs).mean(0)
    h_mean = -(mean * mean.clamp_min(1e-8).log()).sum(1)
    h_each = torch.stack([-(p * lp).sum(1) for p, lp in zip(probs, logs)]).mean(0)
    return (h_mean - h_each).mean()


def fgsm(member: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """x + eps * sign(d CE(member(x), target) / dx), clipped to the pixel range 0..255: the image
    moved one step towards changing the member's prediction `target` (at its logits' grid). Its own
    forward pass, so the training loss's backward pass does not run down to the pixels."""
    probe = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(member.logits(probe).float(), target)
        (grad,) = torch.autograd.grad(loss, probe)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 255.0)


def diversity(members, x: torch.Tensor, logits: list[torch.Tensor], eps: float) -> torch.Tensor:
    """Mean over ordered pairs i != j of CE(member j on member i's adversarial image, member i's
    clean prediction); only member j learns from it (the target and the image are fixed)."""
    total, pairs = 0.0, 0
    for i, member in enumerate(members):
        target = logits[i].detach().argmax(1)
        adversarial = fgsm(member, x, target, eps)
        for j, other in enumerate(members):
            if j != i:
                total = total + F.cross_entropy(other.logits(adversarial).float(), target)
                pairs += 1
    return total / max(pairs, 1)


def batch_loss_fn(cfg: dict, semi: dict, n_masked: int, n_total: int, total_steps: int, parts: Parts):
    """batch_loss(ensemble, (images, labels, index)) for trainer.fit: every member's supervised loss
    plus the ramped agreement and diversity terms."""
    co = semi["cotraining"]
    subsets = member_subsets(n_masked, co["members"], co["member_fraction"], semi["seed"])
    own = torch.zeros(co["members"], max(n_total, 1), dtype=torch.bool)
    for k, subset in enumerate(subsets):
        own[k, subset] = True
    step = [0]

    def batch_loss(model, batch):
        x, labels, index = batch
        members = list(model.members)
        outs = [logits_and_aux(m, x) for m in members]
        logits = [lg for lg, _ in outs]
        unmasked = index >= n_masked
        sup = 0.0
        for k, (lg, aux) in enumerate(outs):
            on_masks, on_pseudo = supervised(cfg, lg, labels, own[k].to(index.device)[index], unmasked,
                                             semi["pseudo_weight"], aux)
            sup = sup + on_masks + semi["pseudo_weight"] * on_pseudo
        agree = jensen_shannon(logits)
        ramp = rampup(step[0], total_steps, semi["rampup"])
        step[0] += 1
        loss = sup + ramp * co["agreement_weight"] * agree
        parts.add(loss_supervised=sup.detach(), agreement_jsd=agree.detach(), ramp=ramp)
        if co["diversity_weight"] > 0 and co["adversarial_eps"] > 0:
            differ = diversity(members, x, logits, co["adversarial_eps"])
            loss = loss + ramp * co["diversity_weight"] * differ
            parts.add(diversity_ce=differ.detach())
        return loss
    return batch_loss, subsets
