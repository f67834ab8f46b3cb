"""Pseudo segmentation labels from localization maps, a background cue and a dense CRF.

Core: `make_labels` (image, maps, params in; a label map with 255 = uncertain out).
  background cue: a constant threshold, or 1 - saliency when a saliency map is given (the paper);
  the CRF sharpens the labels along image edges; a pixel becomes 255 when the CRF and the maps
  disagree, when its winning score lies within `uncertain_margin` of the background cue, and, with
  saliency, when two or more object classes claim it or a salient pixel ends up background.
  With `superpixels.enabled`, each region of merged superpixels then takes the majority of its
  labels (wsss/labelling/superpixels.py): labels snap to image regions and 255 pixels inside a
  decided region get its label.
`label_image` is one image's unit of work for the process pool (picklable, no torch).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.dataset import voc
from wsss.labelling import superpixels
from wsss.labelling.crf import dense_crf
from wsss.scoring.metrics import IGNORE, confusion


def make_labels(image: np.ndarray, maps: np.ndarray, classes: list[int], cfg: dict,
                saliency: np.ndarray | None = None, background: np.ndarray | None = None,
                timing: dict | None = None) -> np.ndarray:
    """maps: k x H x W in [0, 1] for the image's tagged classes (dataset indices in `classes`).
    background: the maps' own background score (a label round's segmenter has one), which then
    replaces the threshold or saliency cue. `timing`, when given, gets the superpixel step's
    seconds under "superpixels"."""
    h, w = image.shape[:2]
    lookup = np.array([0] + list(classes), dtype=np.uint8)
    if len(classes) == 0:
        return np.zeros((h, w), np.uint8)
    if background is None:
        background = (1.0 - saliency) if saliency is not None else np.full((h, w), cfg["bg_threshold"], np.float32)
    scores = np.concatenate([background[None].astype(np.float32), maps.astype(np.float32)])
    winner = scores.argmax(0)
    # Scores to probabilities: a temperature-scaled softmax keeps close calls uncertain for the CRF.
    logits = scores / cfg["temperature"]
    probs = np.exp(logits - logits.max(0, keepdims=True))
    probs /= probs.sum(0, keepdims=True)
    refined = dense_crf(image, probs, cfg["crf"]).argmax(0)
    labels = lookup[refined]
    top2 = np.sort(scores, axis=0)[-2:]
    uncertain = (refined != winner) | (top2[1] - top2[0] < cfg["uncertain_margin"])
    if saliency is not None:
        claimed = (maps > cfg["claim_threshold"]).sum(0) >= 2
        salient_background = (saliency > cfg["saliency_threshold"]) & (labels == 0)
        uncertain |= claimed | salient_background
    labels[uncertain] = IGNORE
    sp = cfg.get("superpixels")
    if sp and sp["enabled"]:
        start = time.perf_counter()
        labels = superpixels.vote(labels, superpixels.regions(image, sp), sp)
        if timing is not None:
            timing["superpixels"] = time.perf_counter() - start
    return labels


def load_saliency(root: Path, subdir: str, image_id: str, shape) -> np.ndarray | None:
    if not subdir:
        return None
    path = root / subdir / f"{image_id}.png"
    if not path.exists():
        raise voc.DataError(f"saliency map for image {image_id!r}: {path} not found")
    sal = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    if sal.shape != shape:
        raise voc.DataError(f"saliency map {path}: size {sal.shape} differs from the image's {shape}")
    return sal


def label_image(job):
    """(root, id, classes, uint8 maps, cfg, has_mask, n_classes)
    -> (id, labels, confusion or None, superpixel seconds or None)."""
    root, image_id, classes, maps_u8, cfg, has_mask, n_classes = job
    image = voc.load_image(root, image_id)
    saliency = load_saliency(Path(root), cfg["saliency_dir"], image_id, image.shape[:2])
    maps, background = maps_u8.astype(np.float32) / 255.0, None
    if len(classes) and classes[0] == 0:  # class 0 is background: the maps bring their own cue
        maps, background, classes = maps[1:], maps[0], list(classes[1:])
    timing = {}
    labels = make_labels(image, maps, classes, cfg, saliency, background, timing)
    conf = None
    if has_mask:  # scored only: the mask never shapes the labels
        conf = confusion(voc.load_mask(root, image_id, n_classes), labels, n_classes)
    return image_id, labels, conf, timing.get("superpixels")
