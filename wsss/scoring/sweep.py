"""Scoring localization maps against masks: background-threshold sweep and per-class IoU."""
from __future__ import annotations

import numpy as np

from wsss.scoring.metrics import IGNORE, summary


def maps_to_labels(maps: np.ndarray, classes: list[int], threshold: float) -> np.ndarray:
    """Per pixel the argmax of [background = threshold, class maps]; labels in dataset indices."""
    k, h, w = maps.shape
    if k == 0:
        return np.zeros((h, w), dtype=np.uint8)
    scores = np.concatenate([np.full((1, h, w), threshold, np.float32), maps], axis=0)
    lookup = np.array([0] + list(classes), dtype=np.uint8)
    return lookup[scores.argmax(0)]


def thresholds(start: float, stop: float, step: float) -> list[float]:
    return [round(t, 4) for t in np.arange(start, stop + step / 2, step)]


class ThresholdSweep:
    """Accumulates one confusion matrix per background threshold over many images."""

    def __init__(self, values: list[float], n_classes: int):
        self.values, self.n = values, n_classes
        self.conf = np.zeros((len(values), n_classes, n_classes), dtype=np.int64)

    def add(self, maps: np.ndarray, classes: list[int], mask: np.ndarray) -> None:
        """All thresholds in one pass: a pixel is its best class while the threshold lies below that
        class's score and background from there on (ties go to background, as in maps_to_labels).
        Same counts as scoring maps_to_labels at each threshold; 0.015 vs 0.13 s per VOC image."""
        if mask.shape != maps.shape[1:]:
            raise ValueError(f"shape mismatch: ground truth {mask.shape} vs maps {maps.shape[1:]}")
        gt = mask.reshape(-1).astype(np.int64)
        keep = gt != IGNORE
        gt = gt[keep]
        if gt.size and gt.max() >= self.n:
            raise ValueError(f"ground-truth label {int(gt.max())} outside 0..{self.n - 1}")
        n_t = len(self.values)
        if len(classes) == 0:
            self.conf[:, :, 0] += np.bincount(gt, minlength=self.n)[None]
            return
        flat = maps.reshape(len(classes), -1)[:, keep]
        best = np.asarray(classes, np.int64)[flat.argmax(0)]
        # first threshold index at which background wins: values[i] >= score
        switch = np.searchsorted(np.asarray(self.values, flat.dtype), flat.max(0), side="left")
        hist = np.bincount((switch * self.n + gt) * self.n + best,
                           minlength=(n_t + 1) * self.n * self.n).reshape(n_t + 1, self.n, self.n)
        # threshold i: pixels with switch > i keep their class, the others are background
        fg = hist[::-1].cumsum(0)[::-1][1:]
        bg = hist.sum(2).cumsum(0)[:n_t]
        self.conf += fg
        self.conf[:, :, 0] += bg

    def result(self, class_names: list[str]) -> dict:
        scores = [summary(c, class_names)["miou"] for c in self.conf]
        best = int(np.nanargmax(scores))
        out = summary(self.conf[best], class_names)
        conf, total = self.conf[best], max(int(self.conf[best].sum()), 1)
        out.update({
            "threshold": self.values[best],
            # at that threshold, the share of pixels called foreground against the masks' own share
            "fg_share_pred": round(100 * (1 - conf[:, 0].sum() / total), 2),
            "fg_share_true": round(100 * (1 - conf[0].sum() / total), 2),
            "best_at_sweep_edge": best in (0, len(scores) - 1),
            "sweep": [{"threshold": t, "miou": s} for t, s in zip(self.values, scores)],
        })
        return out
