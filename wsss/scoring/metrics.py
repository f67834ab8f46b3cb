"""Confusion matrix and mIoU: the one implementation every stage reports with."""
from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are ground truth, columns prediction; pixels where gt == 255 are skipped."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape} vs prediction {pred.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = gt != IGNORE
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.max() >= n_classes or gt.min() < 0):
        raise ValueError(f"ground-truth label {int(gt.max())} outside 0..{n_classes - 1}")
    # As in IRN's evaluation, a prediction of 255 (uncertain) counts as background, so a stage
    # cannot raise its mIoU by ignoring hard pixels.
    pred = np.where(pred == IGNORE, 0, pred)
    if pred.size and (pred.max() >= n_classes or pred.min() < 0):
        raise ValueError(f"predicted label {int(pred.max())} outside 0..{n_classes - 1}")
    return np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU for each class; NaN where the class appears in neither ground truth nor prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def summary(conf: np.ndarray, class_names: list[str]) -> dict:
    """The dict stages write to metrics/*.json: miou in percent, per-class IoU in percent."""
    iou = iou_per_class(conf)
    return {
        "miou": round(100 * mean_iou(conf), 2),
        "per_class_iou": {
            name: (None if np.isnan(v) else round(100 * float(v), 2)) for name, v in zip(class_names, iou)
        },
        "pixel_accuracy": round(100 * float(np.diag(conf).sum() / max(conf.sum(), 1)), 2),
    }


def per_class_csv(per_class_iou: dict) -> str:
    """class,iou rows for a DVC bar plot (classes absent everywhere are left out)."""
    return "class,iou\n" + "".join(f"{name},{v}\n" for name, v in per_class_iou.items() if v is not None)
