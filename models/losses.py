"""Losses by name."""
from __future__ import annotations

import torch
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


def _merged_label_log_probs(logits, labels, window: int, ignore_index: int):
    """(log of each group's merged probability of its label, the group's pixel count), both
    B x C x ceil(H/window) x ceil(W/window): group (cell, c) = the pixels of label c in one
    window x window cell. The merged distribution of a group is the mean of its members' softmax
    vectors; the cost only reads its label component, the mean of the members' p[c], taken as a
    log-sum-exp of their log-probabilities so that confident mistakes stay finite (as in CE)."""
    n_classes = logits.shape[1]
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels))
    own = F.log_softmax(logits.float(), 1).gather(1, target[:, None])          # B x 1 x H x W: log p_j[y_j]
    member = F.one_hot(target, n_classes).permute(0, 3, 1, 2).bool() & valid[:, None]   # B x C x H x W
    pad = (0, (-labels.shape[-1]) % window, 0, (-labels.shape[-2]) % window)   # partial cells: padded, not members
    member = F.pad(member.to(torch.uint8), pad).bool()
    values = torch.where(member, F.pad(own, pad), own.new_tensor(float("-inf")))
    counts = F.avg_pool2d(member.float(), window) * window ** 2
    peak = F.max_pool2d(values, window).detach()
    peak = torch.where(counts > 0, peak, torch.zeros_like(peak))               # empty groups: no -inf - -inf
    spread = peak.repeat_interleave(window, -2).repeat_interleave(window, -1)
    sums = F.avg_pool2d(torch.where(member, torch.exp(values - spread), torch.zeros_like(values)), window) * window ** 2
    # empty groups: log(1) - log(1), so no inf reaches the gradient of the torch.where below
    sums, safe = torch.where(counts > 0, sums, torch.ones_like(sums)), counts.clamp(min=1)
    return peak + torch.log(sums) - torch.log(safe), counts


@LOSSES.register("locally_adaptive")
def locally_adaptive(logits, labels, windows=(1, 2, 4), ignore_index: int = 255):
    """Locally adaptive learning estimator (Guo et al., 2018, arXiv 1802.08290). For each window size
    k (stride k: non-overlapping k x k cells of the loss grid), an adaptive pooling filter merges the
    predicted class distributions of the pixels that share a label within a cell (the filter adapts
    to the labels: pixels of another class or 255 never enter a group), and the cost is the NLL of the
    label under the merged distribution. A pixel's cost is its group's, so the per-window loss is the
    count-weighted mean over groups: at k = 1 exactly cross-entropy. The loss is the mean over windows.

    Why: neighbouring pixels of one class are judged together, so a group is right when it is right
    on the whole, rather than each of its pixels on its own; isolated outliers (often label noise
    near boundaries) cost less than under plain CE, regional consistency is rewarded."""
    valid = labels != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    total = 0.0
    for window in windows:
        log_merged, counts = _merged_label_log_probs(logits, labels, int(window), ignore_index)
        total = total - (counts * log_merged).sum() / counts.sum()
    return total / len(windows)
