"""Charts for the tracking server: per-class IoU bars and a confusion matrix, as PNG files.

matplotlib is imported inside the functions so stages that never chart do not pay for it.
"""
from __future__ import annotations

from pathlib import Path

from wsss.stores.atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def per_class_iou_chart(per_class: dict, path: str | Path, title: str = "per-class IoU") -> Path:
    """Bars in percent, each with its value; a class with no IoU (None: in neither ground truth
    nor prediction, as wsss.scoring.metrics.summary writes it) gets no bar and an "n/a"."""
    if not per_class:
        raise ValueError("per_class_iou: empty, nothing to chart")
    plt = _pyplot()
    names = list(per_class)
    values = [None if per_class[n] is None else float(per_class[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.5))
    bars = ax.bar(range(len(names)), [v or 0.0 for v in values], color="#3b7dd8")
    ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    return _save(plt, fig, path)


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
    totals = m.sum(axis=1)
    rows = m / np.maximum(totals[:, None], 1e-12)
    plt = _pyplot()
    size = max(4.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row (cells in %)")
    if len(classes) <= 30:  # the shares in percent, where there is room to read them
        for i, j in zip(*np.nonzero(rows >= 0.005)):
            ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=6 if len(classes) > 12 else 9,
                    color="white" if rows[i, j] > 0.5 else "black")
    # a class with no ground-truth pixels has an empty row, not a row of zeros: say so
    row_names = [c if t > 0 else f"{c} (no pixels)" for c, t in zip(classes, totals)]
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), row_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    return _save(plt, fig, path)
