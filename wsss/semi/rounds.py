"""Self-training rounds of the semi segmenter (semi.rounds): after a round, the unmasked training
images are labelled again by the network that round trained, and the next round trains from the same
start on the masks plus these labels instead of the pipeline's pseudo labels.

A round's network has learnt from the masks, so its labels of the unmasked images should be closer
to the truth than the weak pseudo labels it was trained beside. The new labels keep only background
and the image's own tags (its image-level labels, as every weak stage does) and, with `crf`, pass
through the dense CRF like the pipeline's pseudo labels. No training mask is read here.
"""
from __future__ import annotations

import numpy as np

from wsss.dataset import voc
from wsss.labelling.crf import crf_argmax
from wsss.labelling.mining import restrict
from wsss.scaleout.engine import progress
from wsss.training.segmentation import predict_probs


def tag_labels(image: np.ndarray, probs: np.ndarray, tags: list[int], crf: dict | None) -> np.ndarray:
    """Per-pixel class (uint8) among background and the image's tags: the probabilities (C x H x W)
    restricted to those classes, then their argmax (or the CRF's, crf: its settings), mapped back
    to class numbers."""
    keep = np.array([0, *sorted(tags)])
    kept = restrict(probs, list(keep[1:]))
    return keep[kept.argmax(0) if crf is None else crf_argmax(image, kept, crf)].astype(np.uint8)


def relabel(model, root, tags: dict[str, list[int]], cfg: dict, device, crf: dict | None) -> dict[str, np.ndarray]:
    """{id: labels} for the images in `tags` ({id: class numbers}), predicted by `model` with the
    segmenter's val inference settings (cfg: the segmenter section); crf: the CRF's settings or None."""
    out = {}
    for image_id in progress(list(tags), len(tags), "relabel unmasked"):
        image = voc.load_image(root, image_id)
        probs = predict_probs(model, image, device, cfg["val_flip"], cfg["val_scales"], cfg["precision"])
        out[image_id] = tag_labels(image, probs, tags[image_id], crf)
    return out
