"""Strong-weak dual branch (Luo & Yang, "Semi-supervised semantic segmentation via strong-weak
dual-branch network", ECCV 2020): one backbone, two heads. The strong head learns from the
ground-truth masks only, the weak head from the pseudo labels only; both train the shared backbone.
The pseudo labels' systematic errors (blobby extents, missed parts) are absorbed by the weak head
instead of being averaged into the one the masks train, while the backbone still learns from every
image. Only the strong head predicts, so the saved network is a plain segmenter.

Each head sees only its own images of the batch (the backbone runs once on all of them), so a step
costs what a masks+pseudo step does.

`branch: classifier` shares the whole head too and gives the pseudo labels only their own last
1 x 1 classifier: a lighter split for few masks, where a whole head of its own learns from the
masked images alone (the paper had 1,464 of them).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from wsss.semi.losses import Parts, part_loss


class DualBranch(nn.Module):
    """A segmenter (backbone + strong head, what is saved and scored) and a weak head for the pseudo labels."""

    def __init__(self, segmenter: nn.Module, fresh_weak_head: bool = True, branch: str = "head"):
        super().__init__()
        self.segmenter, self.branch = segmenter, branch
        if branch == "classifier" and not hasattr(segmenter.head, "pixel_features"):
            raise ValueError(f"semi.weak_branch: classifier needs a head whose classifier reads pixel_features "
                             f"(aspp, aspp_plus), not {type(segmenter.head).__name__}: use weak_branch: head")
        if branch not in ("head", "classifier"):
            raise ValueError(f"semi.weak_branch: {branch!r} is not head or classifier")
        # same shape; fresh, or the trained weights
        self.weak_head = copy.deepcopy(segmenter.head if branch == "head" else segmenter.head.classifier)
        if fresh_weak_head:
            for module in self.weak_head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    @property
    def backbone(self):
        return self.segmenter.backbone

    def new_modules(self) -> list[nn.Module]:
        return [*self.segmenter.new_modules(), self.weak_head]

    def branch_logits(self, images: torch.Tensor, strong: torch.Tensor):
        """((logits, aux) of the strong head on images[strong], the same of the weak head on the rest);
        None for a branch with no images in this batch."""
        inputs, heads = self.segmenter.head_inputs(images), (self.segmenter.head, self.weak_head)
        if self.branch == "classifier":   # the shared head runs once; the two classifiers read its features
            inputs = (self.segmenter.head.pixel_features(*inputs),)
            heads = (self.segmenter.head.classifier, self.weak_head)
        return tuple(self.segmenter.head_outputs(head, tuple(t[rows] for t in inputs)) if bool(rows.any()) else None
                     for head, rows in zip(heads, (strong, ~strong)))


def batch_loss_fn(cfg: dict, n_masked: int, pseudo_weight: float, parts: Parts):
    """Strong head: the masks' loss; weak head: pseudo_weight x the pseudo labels' loss."""

    def branch_loss(out, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if out is None:   # no image of this branch in the batch
            return x.sum() * 0.0
        logits, aux = out
        return part_loss(cfg, logits, labels, torch.ones(len(logits), dtype=torch.bool, device=logits.device), aux)

    def batch_loss(model: DualBranch, batch):
        x, labels, index = batch
        masked = index < n_masked
        on_masks, on_pseudo = (branch_loss(out, labels[rows], x)
                               for out, rows in zip(model.branch_logits(x, masked), (masked, ~masked)))
        parts.add(loss_masks=on_masks.detach(), loss_pseudo=on_pseudo.detach())
        return on_masks + pseudo_weight * on_pseudo
    return batch_loss
