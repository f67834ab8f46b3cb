"""The top-down step of a label round: a trained segmenter's view of the training images,
restricted to each image's tags and expanded by mined class prototypes (wsss/labelling/mining.py),
becomes the next round's maps. Two passes: the first predicts every image and builds the
prototypes, the second scores each image against them.

The first pass keeps each image's restricted probabilities (uint8) and its head features (the
input of the segmenter's last 1x1 conv, float16, at the head's stride) in memory: about 1.3 MB
an image on VOC, 0.4 GB for 330 images. A dataset far larger would stream them through a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from wsss.dataset import voc
from wsss.dataset.images import upsample
from wsss.labelling import mining
from wsss.labelling.pseudo import load_saliency
from wsss.scoring.metrics import confusion
from wsss.training.inference import sum_over_views
from wsss.training.runtime import autocast


class _Features:
    """Records the input of the head's classifier conv (the features every class is read from)."""

    def __init__(self, model):
        self.seen: list[torch.Tensor] = []
        self.handle = model.head.classifier.register_forward_hook(lambda m, inputs, out: self.seen.append(inputs[0]))


def _resize(maps: np.ndarray, hw) -> np.ndarray:
    return upsample(torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None], tuple(hw))[0].numpy()


@torch.no_grad()
def _predict(model, image: np.ndarray, device, scales, flip: bool, precision: str, hook: _Features):
    """(softmax probabilities C x H x W over the views, head features D x h x w of the view nearest scale 1)."""
    hook.seen.clear()
    with autocast(device, precision):
        logits = sum_over_views(model, image, scales, flip, device) / (len(scales) * (2 if flip else 1))
    nearest = int(np.argmin([abs(s - 1.0) for s in scales]))
    features = hook.seen[nearest][0].float().cpu().numpy()  # [0]: the unflipped image of the batch
    return torch.softmax(logits, 0).cpu().numpy(), features


def predict_train(model, root: Path, rows: list[dict], n_classes: int, spec: dict, device, precision: str):
    """Pass 1: (kept, prototypes): per row (row, tags, restricted probabilities as uint8, float16
    features), and the class prototypes of the confident regions of all rows."""
    model.eval()
    hook = _Features(model)
    kept, protos = [], None
    try:
        for row in tqdm(rows, desc="round: predict train", unit="img", dynamic_ncols=True):
            image = voc.load_image(root, row["id"])
            probs, features = _predict(model, image, device, spec["scales"], spec["flip"], precision, hook)
            tags = list(row["tags"])
            restricted = mining.restrict(probs, tags)
            if protos is None:
                protos = mining.Prototypes(n_classes, features.shape[0])
            protos.add(features, _resize(restricted, features.shape[-2:]), tags, spec["mining"]["confidence"])
            kept.append((row, tags, np.round(restricted * 255).astype(np.uint8), features.astype(np.float16)))
    finally:
        hook.handle.remove()
    return kept, protos


def mine(kept: list, protos: "mining.Prototypes", root: Path, n_classes: int, mining_cfg: dict, saliency_dir: str,
         scores: dict) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Pass 2: yields (id, [0, *tags], maps (1 + k) x H x W) for the kept rows; scores (filled as it
    goes): confusion matrices of the segmenter's restricted argmax ("segmenter") and of the mined
    maps' argmax ("mined") where masks exist, for scoring only."""
    vectors = protos.vectors() if protos is not None else None
    scores.update(segmenter=np.zeros((n_classes, n_classes), np.int64), mined=np.zeros((n_classes, n_classes), np.int64))
    for row, tags, restricted_u8, features in tqdm(kept, desc="round: mine prototypes", unit="img", dynamic_ncols=True):
        restricted = restricted_u8.astype(np.float32) / 255.0
        similar = mining.similarity(features.astype(np.float32), vectors, tags, mining_cfg["temperature"])
        maps = mining.expand(restricted, _resize(similar, restricted.shape[-2:]), mining_cfg["weight"])
        saliency = load_saliency(Path(root), saliency_dir, row["id"], restricted.shape[-2:])
        if saliency is not None:
            maps = mining.bayes(maps, saliency)
        if row["has_mask"]:  # scored only: the masks never shape the maps
            lookup = np.array([0, *tags], np.uint8)
            mask = voc.load_mask(root, row["id"], n_classes)
            scores["segmenter"] += confusion(mask, lookup[restricted.argmax(0)], n_classes)
            scores["mined"] += confusion(mask, lookup[maps.argmax(0)], n_classes)
        yield row["id"], [0, *tags], maps


def round_maps(model, root: Path, rows: list[dict], classes: list[str], spec: dict, saliency_cfg: dict,
               device, precision: str, scores: dict) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Both passes for the training rows; spec: a `rounds.<key>` section (see `mine` for scores)."""
    kept, protos = predict_train(model, root, rows, len(classes), spec, device, precision)
    yield from mine(kept, protos, root, len(classes), spec["mining"], saliency_cfg["saliency_dir"], scores)
