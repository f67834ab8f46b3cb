"""Charts for the tracking server: per-class IoU bars and a confusion matrix, as PNG files.

matplotlib is imported inside the functions so stages that never chart do not pay for it.
"""
from __future__ import annotations

from pathlib import Path

from stores.atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    return plt


def per_class_iou_chart(per_class: dict, path: str | Path, title: str = "per-class IoU") -> Path:
    if not per_class:
        raise ValueError("per_class_iou: empty, nothing to chart")
    plt = _pyplot()
    names = list(per_class)
    values = [float(per_class[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.5))
    ax.bar(range(len(names)), values, color="#3b7dd8")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix_chart(matrix: list, classes: list[str] | None, path: str | Path,
                           title: str = "confusion matrix") -> Path:
    """Rows: ground truth, columns: prediction; each row normalised so the colours compare (the
    share of a class's pixels predicted as each class), with class names and a colour bar. The
    stage reports and MLflow get this same chart."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix: expected a square matrix, got shape {m.shape}")
    classes = list(classes or [str(i) for i in range(m.shape[0])])
    if len(classes) != m.shape[0]:
        raise ValueError(f"confusion matrix: {m.shape[0]} rows but {len(classes)} class names")
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
    plt = _pyplot()
    size = max(4.0, 0.4 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
