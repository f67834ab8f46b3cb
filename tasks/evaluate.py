"""Scoring localization maps against masks: background-threshold sweep and per-class IoU."""
from __future__ import annotations

import numpy as np

from tasks.metrics import confusion, summary


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
        for i, t in enumerate(self.values):
            self.conf[i] += confusion(mask, maps_to_labels(maps, classes, t), self.n)

    def result(self, class_names: list[str]) -> dict:
        scores = [summary(c, class_names)["miou"] for c in self.conf]
        best = int(np.nanargmax(scores))
        out = summary(self.conf[best], class_names)
        out.update({
            "threshold": self.values[best],
            "best_at_sweep_edge": best in (0, len(scores) - 1),
            "sweep": [{"threshold": t, "miou": s} for t, s in zip(self.values, scores)],
        })
        return out
