"""What the segmentation stages share: labelled crops, training, evaluation with and without CRF.

The weak model (pseudo labels) and the reference (ground-truth masks) differ only in where the
labels come from, so both call `train` and `evaluate` with their own label source.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from models.registry import LOSSES
from models.segmenter import build_segmenter
from tasks import data, images, trainer
from tasks.crf import crf_labels
from tasks.metrics import IGNORE, confusion
from tasks.runtime import autocast, load_checkpoint, place, training_loader


class LabelledCrops(Dataset):
    def __init__(self, root, ids: list[str], labels: Callable[[str], np.ndarray], crop: int,
                 resize_long: tuple[int, int], seed: int):
        self.root, self.ids, self.labels, self.crop, self.resize = root, ids, labels, crop, resize_long
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image, labels = data.load_image(self.root, image_id), self.labels(image_id)
        if labels.shape != image.shape[:2]:
            raise data.DataError(f"labels for image {image_id!r}: size {labels.shape} differs from {image.shape[:2]}")
        long_side = images.random_long_side(self.rng, self.resize)
        image = images.resize_long(image, long_side)
        labels = images.resize_long(labels, long_side, Image.NEAREST)
        image, labels = images.flip_and_crop(self.rng, self.crop, image, (labels, IGNORE))
        return images.to_tensor(image), torch.from_numpy(labels.astype(np.int64))


def loss_grid(logits: torch.Tensor, labels: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels on the grid the loss is taken on: every `stride`-th pixel of the labels
    (the centre of each stride x stride cell; nearest, so 255 stays 255) and the logits resized to
    it. At stride 1 the full-size loss; at 4 it costs 0.005 s instead of 0.10-0.13 s a step."""
    labels = labels[:, stride // 2::stride, stride // 2::stride]
    # contiguous first: softmax over channels of a channels-last 21 x 256 x 256 batch is 25% slower
    return images.upsample(logits.float().contiguous(), tuple(labels.shape[-2:])), labels


def segmentation_loss(cfg: dict) -> Callable:
    """batch_loss(model, batch) for the trainer: cfg["loss"] from the LOSSES registry, 255 ignored,
    taken every cfg["loss_stride"] pixels."""
    loss = LOSSES.get(cfg.get("loss", "cross_entropy"), "segmenter.loss")
    drop, stride = cfg.get("loss_drop", 0.0), cfg["loss_stride"]

    def batch_loss(model, batch):
        x, labels = batch
        logits, labels = loss_grid(model.logits(x), labels, stride)
        return loss(logits, labels.contiguous(), drop=drop, ignore_index=IGNORE)
    return batch_loss


def warm_start(model, state: dict, source: str) -> None:
    """Copy a localizer's weights (the refiner: same backbone and ASPP head) into a segmenter.

    The localizer has one output per foreground class; they become outputs 1.. and the background
    output keeps its fresh initialisation. A decoder head (aspp_plus) keeps its decoder fresh. A key
    with another shape means the two configs differ.
    """
    own = model.state_dict()
    fresh = tuple(f"head.{name}." for name in getattr(model.head, "decoder", ()))
    for key in ("head.classifier.weight", "head.classifier.bias"):
        if key in state and key in own and state[key].shape == (own[key].shape[0] - 1, *own[key].shape[1:]):
            fg = own[key].clone()
            fg[1:] = state[key]
            state = {**state, key: fg}
    state = {**{k: v for k, v in state.items() if not k.startswith(fresh)},
             **{k: v for k, v in own.items() if k.startswith(fresh)}}
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise ValueError(f"segmenter.init: {source} does not fit the segmenter (missing {missing[:3]}, "
                         f"other shape {wrong[:3]}): refiner and segmenter need the same backbone, "
                         f"head, aspp_channels and number of aspp_rates")
    model.load_state_dict({k: state[k] for k in own})


def train(cfg: dict, root, ids: list[str], labels: Callable, n_classes: int, device, desc: str,
          start: tuple[dict, str] | None = None):
    """start: (state_dict, where it came from) to warm-start from instead of the backbone's ImageNet weights."""
    model = build_segmenter(cfg, n_classes)
    if start is not None:
        warm_start(model, *start)
    loader = training_loader(
        LabelledCrops(root, ids, labels, cfg["crop_size"], tuple(cfg["resize_long"]), cfg["seed"]), cfg)
    history = trainer.fit(model, loader, cfg, device, segmentation_loss(cfg), desc)
    return model, history


@torch.no_grad()
def predict_probs(model, image: np.ndarray, device, flip: bool, scales=(1.0,), precision: str = "fp32") -> np.ndarray:
    """Softmax class probabilities (C x H x W) for one image at its own size: logits averaged over
    the input scales (and horizontal flips), each resized back to the image."""
    model.eval()
    with autocast(device, precision):
        total = images.sum_over_views(model, image, scales, flip, device)
    mean = total / (len(scales) * (2 if flip else 1))  # a mean, not a sum: the CRF reads these as confidences
    return torch.softmax(mean, 0).cpu().numpy()


def evaluate(model, root, rows: list[dict], n_classes: int, cfg: dict, device, samples: int = 0, workers: int = 0,
             crf: bool = True):
    """(confusion without CRF, confusion with CRF or None, sample panels) over rows that have masks.

    The network runs here; the CRF of each image (single-threaded, and on CPU most of the time)
    runs in a pool of `workers` processes (0: all cores), at most two images per worker in flight
    so memory stays flat. crf=False skips it (about half the evaluation time on 2 cores).
    """
    plain = np.zeros((n_classes, n_classes), np.int64)
    refined = np.zeros_like(plain) if crf else None
    panels, pending = [], deque()
    n_workers = workers or os.cpu_count() or 1
    in_flight = 2 * n_workers if crf else 0  # without CRF jobs an image is finished at once

    def finish(item) -> None:
        image_id, image, mask, pred, job = item
        plain[...] += confusion(mask, pred, n_classes)
        columns = [image, images.colour_labels(pred)]
        if job is not None:
            pred_crf = job.get()
            refined[...] += confusion(mask, pred_crf, n_classes)
            columns.append(images.colour_labels(pred_crf))
        if len(panels) < samples:
            panels.append((image_id, np.concatenate([*columns, images.colour_labels(mask)], 1)))

    # spawn, not fork: this process already runs torch (OpenMP), which forked children can deadlock on
    with mp.get_context("spawn").Pool(n_workers) if crf else nullcontext() as pool:
        for row in tqdm([r for r in rows if r["has_mask"]], desc="evaluate val", unit="img", dynamic_ncols=True):
            image = data.load_image(root, row["id"])
            mask = data.load_mask(root, row["id"], n_classes)
            probs = predict_probs(model, image, device, cfg["val_flip"], cfg["val_scales"], cfg["precision"])
            job = pool.apply_async(crf_labels, ((image, probs, cfg["crf"]),)) if crf else None
            pending.append((row["id"], image, mask, probs.argmax(0).astype(np.uint8), job))
            if len(pending) > in_flight:
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    return plain, refined, panels


def confusion_image(conf: np.ndarray, cell: int = 16) -> np.ndarray:
    """Row-normalised confusion matrix (ground truth rows, predictions columns) as a heat map."""
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    heat = images.colourise(rows)
    return np.kron(heat, np.ones((cell, cell, 1), np.uint8))


def checkpoint_config(cfg: dict, classes: list[str]) -> dict:
    return {"segmenter": cfg, "classes": classes}


def load_segmenter(path, device):
    ckpt = load_checkpoint(path)
    cfg, classes = ckpt["config"]["segmenter"], ckpt["config"]["classes"]
    model = build_segmenter({**cfg, "pretrained": False}, len(classes))
    model.load_state_dict(ckpt["state_dict"])
    return place(model.eval(), device), cfg, classes
