"""The constant-prediction baselines a trained segmenter must clear (val mIoU with scoring.metrics).

`constant_baselines` is what a quality floor compares against: predicting background everywhere,
the majority class of the train masks' pixels (255 left out) and, when that is background, the most
frequent object class. Not yet asserted on a trained model: the configs tried so far that run in
about a minute (SMALL; 128 px with 24 steps; 256 px 16 images with 20 steps) do not learn enough
(segmenter val mIoU 1.6 and 18.4 against a background baseline of ~16-20), see the commit message.
"""
import numpy as np
import pytest

from dataset import demo, voc
from scoring.metrics import IGNORE, confusion, mean_iou


def constant_baselines(root, train_split: str = "train", val_split: str = "val") -> dict[str, float]:
    classes = voc.read_classes(root)
    n = len(classes)
    counts = np.zeros(n, np.int64)
    for image_id in voc.read_split(root, train_split):
        mask = voc.load_mask(root, image_id, n)
        counts += np.bincount(mask[mask != IGNORE].ravel(), minlength=n)
    majority = int(counts.argmax())
    candidates = {"background": 0, f"majority ({classes[majority]})": majority}
    if majority == 0:
        obj = 1 + int(counts[1:].argmax())
        candidates[f"most frequent object ({classes[obj]})"] = obj
    masks = [voc.load_mask(root, i, n) for i in voc.read_split(root, val_split)]
    return {name: round(100 * mean_iou(sum(confusion(m, np.full_like(m, c), n) for m in masks)), 2)
            for name, c in candidates.items()}


def test_constant_baselines_on_the_demo(tmp_path):
    root = tmp_path / "demo"
    demo.generate(root, seed=0, n_train=6, n_val=3, image_size=64)
    got = constant_baselines(root)
    assert list(got) == ["background", "majority (background)", "most frequent object (beetle)"]
    # By hand: all-background scores IoU(bg) = its share of the labelled val pixels, 0 for every class
    # present in the val masks, averaged over those classes.
    masks = [voc.load_mask(root, i, 5) for i in voc.read_split(root, "val")]
    labelled = np.concatenate([m[m != IGNORE] for m in masks])
    present = np.unique(labelled)
    assert got["background"] == pytest.approx(100 * (labelled == 0).mean() / len(present), abs=0.01)
    assert got["background"] == 16.26 and got["most frequent object (beetle)"] == 0.41
