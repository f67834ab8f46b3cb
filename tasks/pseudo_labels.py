"""Stage 4: pseudo segmentation labels from the maps, a background cue and a dense CRF.

`pseudo_labels.source` picks the maps: `refined` (the paper's path, the default) or `raw` (the
classifier's CAMs, for comparison or when the refiner is not trusted on new data).

Core: `make_labels` (image, maps, params in; a label map with 255 = uncertain out).
  background cue: a constant threshold, or 1 - saliency when a saliency map is given (the paper);
  the CRF sharpens the labels along image edges; a pixel becomes 255 when the CRF and the maps
  disagree, when its winning score lies within `uncertain_margin` of the background cue, and, with
  saliency, when two or more object classes claim it or a salient pixel ends up background.
`main` runs it over all training images on all cores, stores the labels packed and scores them.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from PIL import Image

from tasks import data, images, labelstore, mapstore, paths, tracking
from tasks.crf import dense_crf
from tasks.io import atomic_path, write_json, write_text
from tasks.metrics import IGNORE, confusion, per_class_csv, summary


SOURCES = {"refined": paths.REFINED_MAPS, "raw": paths.MAPS}


def make_labels(image: np.ndarray, maps: np.ndarray, classes: list[int], cfg: dict,
                saliency: np.ndarray | None = None) -> np.ndarray:
    """maps: k x H x W in [0, 1] for the image's tagged classes (dataset indices in `classes`)."""
    h, w = image.shape[:2]
    lookup = np.array([0] + list(classes), dtype=np.uint8)
    if len(classes) == 0:
        return np.zeros((h, w), np.uint8)
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
    return labels


def _load_saliency(root: Path, subdir: str, image_id: str, shape) -> np.ndarray | None:
    if not subdir:
        return None
    from PIL import Image

    path = root / subdir / f"{image_id}.png"
    if not path.exists():
        raise data.DataError(f"saliency map for image {image_id!r}: {path} not found")
    sal = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    if sal.shape != shape:
        raise data.DataError(f"saliency map {path}: size {sal.shape} differs from the image's {shape}")
    return sal


def _work(job):
    root, image_id, classes, maps_u8, cfg, has_mask, n_classes = job
    image = data.load_image(root, image_id)
    saliency = _load_saliency(Path(root), cfg["saliency_dir"], image_id, image.shape[:2])
    labels = make_labels(image, maps_u8.astype(np.float32) / 255.0, classes, cfg, saliency)
    conf = None
    if has_mask:
        conf = confusion(data.load_mask(root, image_id, n_classes), labels, n_classes)
    return image_id, labels, conf


def main(params: dict) -> dict:
    cfg = params["pseudo_labels"]
    manifest, classes, root = data.read_manifest(paths.MANIFEST)
    rows = {r["id"]: r for r in data.split_rows(manifest, params["data"]["train_split"])}
    n = len(classes)
    conf, ignored, total = np.zeros((n, n), np.int64), 0, 0
    jobs = ((str(root), i, c, m, cfg, rows[i]["has_mask"], n)
            for i, c, m in mapstore.read(SOURCES[cfg["source"]], as_uint8=True))
    workers = cfg["workers"] or os.cpu_count() or 1
    start = time.perf_counter()

    def results():
        nonlocal conf, ignored, total
        # spawn, not fork: a parent that already ran torch (OpenMP) can deadlock forked children.
        with mp.get_context("spawn").Pool(workers) as pool:
            for image_id, labels, c in tqdm(pool.imap(_work, jobs, chunksize=2), total=len(rows),
                                            desc="pseudo labels (CRF)", unit="img", dynamic_ncols=True):
                ignored += int((labels == IGNORE).sum())
                total += labels.size
                if c is not None:
                    conf += c
                yield image_id, labels

    with atomic_path(paths.REPORTS / "pseudo_labels") as samples_dir:
        samples_dir.mkdir()

        def with_samples():
            for k, (image_id, labels) in enumerate(results()):
                if k < cfg["n_samples"]:  # image | pseudo label (white = 255) | ground truth
                    Image.fromarray(sample_panel(root, image_id, labels, n)).save(samples_dir / f"{image_id}.png")
                yield image_id, labels

        count = labelstore.write(with_samples(), paths.PSEUDO_LABELS, cfg["shard_size"])
    metrics = {"source": cfg["source"], "n_images": count, "ignored_fraction": round(ignored / max(total, 1), 4),
               "seconds": round(time.perf_counter() - start, 1), "workers": workers}
    if conf.sum():
        metrics = {**summary(conf, classes), **metrics}
    write_json(metrics, paths.METRICS / "pseudo_labels.json")
    write_text(per_class_csv(metrics.get("per_class_iou", {})), paths.PLOTS / "pseudo_labels_per_class.csv")
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracking.log_artifact(paths.REPORTS / "pseudo_labels", "pseudo_label_samples")
    return metrics


def sample_panel(root, image_id: str, labels: np.ndarray, n_classes: int) -> np.ndarray:
    image = data.load_image(root, image_id)
    mask = data.load_mask(root, image_id, n_classes)
    panels = [image, images.colour_labels(labels)] + ([images.colour_labels(mask)] if mask is not None else [])
    return np.concatenate(panels, axis=1)
