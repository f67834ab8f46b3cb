"""What the segmentation stages share: labelled crops, training, evaluation with and without CRF.

The weak model (pseudo labels) and the reference (ground-truth masks) differ only in where the
labels come from, so both call `train` and `evaluate` with their own label source.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import paths
from dataset import images, voc
from dataset.crops import TrainingCrops
from labelling.crf import crf_labels
from models.networks import to_config
from models.registry import LOSSES
from models.segmenter import build_segmenter
from scoring.metrics import IGNORE, confusion, per_class_csv, summary
from stores.atomic import atomic_path
from tracking import charts, panels
from tracking.outputs import write_stage_outputs
from training import checkpoints, distributed, trainer
from training.inference import sum_over_views
from training.runtime import autocast, resolve_device, resolve_precision, seed_everything, training_loader


class LabelTarget:
    """A label map per image (pseudo labels or masks, 255 = ignore) for `dataset.crops.TrainingCrops`:
    resized nearest with the image, then flipped and cropped with it (padding is 255)."""

    dense, fill = True, IGNORE

    def __init__(self, labels: Callable[[str], np.ndarray]):
        self.labels = labels

    def load(self, image_id: str, source_hw, size_hw) -> np.ndarray:
        labels = self.labels(image_id)
        if labels.shape != tuple(source_hw):
            raise voc.DataError(f"labels for image {image_id!r}: size {labels.shape} differs from {tuple(source_hw)}")
        return np.asarray(Image.fromarray(labels).resize(tuple(size_hw)[::-1], Image.NEAREST))

    def to_tensor(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.int64))


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
    """(model, history, batch figures: distributed.batch_metrics); start: (state_dict, where it came
    from) to warm-start from instead of the backbone's ImageNet weights."""
    model = build_segmenter(cfg, n_classes)
    if start is not None:
        warm_start(model, *start)
    loader = training_loader(
        TrainingCrops(root, ids, LabelTarget(labels), cfg["crop_size"], cfg["resize_long"], cfg["seed"]), cfg)
    history = trainer.fit(model, loader, cfg, device, segmentation_loss(cfg), desc)
    return model, history, distributed.batch_metrics(loader)


@torch.no_grad()
def predict_probs(model, image: np.ndarray, device, flip: bool, scales=(1.0,), precision: str = "fp32") -> np.ndarray:
    """Softmax class probabilities (C x H x W) for one image at its own size: logits averaged over
    the input scales (and horizontal flips), each resized back to the image."""
    model.eval()
    with autocast(device, precision):
        total = sum_over_views(model, image, scales, flip, device)
    mean = total / (len(scales) * (2 if flip else 1))  # a mean, not a sum: the CRF reads these as confidences
    return torch.softmax(mean, 0).cpu().numpy()


def evaluate(model, root, rows: list[dict], n_classes: int, cfg: dict, device, samples: int = 0, workers: int = 0,
             crf: bool = True):
    """(confusion without CRF, confusion with CRF or None, samples) over rows that have masks; a
    sample is (id, image, [(title, predicted labels)], mask), for tracking.panels.labels_panel.

    The network runs here; the CRF of each image (single-threaded, and on CPU most of the time)
    runs in a pool of `workers` processes (0: all cores), at most two images per worker in flight
    so memory stays flat. crf=False skips it (about half the evaluation time on 2 cores).
    """
    plain = np.zeros((n_classes, n_classes), np.int64)
    refined = np.zeros_like(plain) if crf else None
    samples_out, pending = [], deque()
    n_workers = workers or os.cpu_count() or 1
    in_flight = 2 * n_workers if crf else 0  # without CRF jobs an image is finished at once

    def finish(item) -> None:
        image_id, image, mask, pred, job = item
        plain[...] += confusion(mask, pred, n_classes)
        predictions = [("prediction", pred)]
        if job is not None:
            pred_crf = job.get()
            refined[...] += confusion(mask, pred_crf, n_classes)
            predictions.append(("prediction + CRF", pred_crf))
        if len(samples_out) < samples:
            samples_out.append((image_id, image, predictions, mask))

    # spawn, not fork: this process already runs torch (OpenMP), which forked children can deadlock on
    with mp.get_context("spawn").Pool(n_workers) if crf else nullcontext() as pool:
        for row in tqdm([r for r in rows if r["has_mask"]], desc="evaluate val", unit="img", dynamic_ncols=True):
            image = voc.load_image(root, row["id"])
            mask = voc.load_mask(root, row["id"], n_classes)
            probs = predict_probs(model, image, device, cfg["val_flip"], cfg["val_scales"], cfg["precision"])
            job = pool.apply_async(crf_labels, ((image, probs, cfg["crf"]),)) if crf else None
            pending.append((row["id"], image, mask, probs.argmax(0).astype(np.uint8), job))
            if len(pending) > in_flight:
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    return plain, refined, samples_out


def train_and_score(params: dict, labels_for: Callable[[str], np.ndarray], name: str, checkpoint: Path,
                    crf: bool = True) -> dict:
    """The segmentation stages' body: train on the train split with `labels_for(id)`, save, score on
    val without CRF post-processing and, if crf, with it too; writes metrics/<name>.json,
    plots/<name>_*.csv and reports/<name>/ (confusion matrix chart, sample panels).

    segmenter.init: refiner starts from the refiner's weights (artifacts/refiner.pt).
    """
    cfg = params["segmenter"]
    warm = None
    if cfg["init"] == "refiner":
        warm = (checkpoints.read(paths.REFINER)["state_dict"], str(paths.REFINER))
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    train_ids = [r["id"] for r in voc.split_rows(manifest, params["data"]["train_split"])]
    start = time.perf_counter()
    model, history, batch = train(cfg, root, train_ids, labels_for, len(classes), device, f"train {name}", warm)
    train_seconds = time.perf_counter() - start
    checkpoints.save(checkpoint, model, to_config("segmenter", cfg, classes))

    val_rows = voc.split_rows(manifest, params["data"]["val_split"])
    start = time.perf_counter()
    plain, with_crf, samples = evaluate(model, root, val_rows, len(classes), cfg, device, samples=4, crf=crf)
    metrics = {"train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1),
               "epochs": cfg["epochs"], "init": cfg["init"], "n_train": len(train_ids),
               "precision": resolve_precision(device, cfg["precision"]),
               "final_loss": round(history[-1]["loss"], 5), **batch}
    if plain.sum():
        s = summary(plain, classes)
        metrics.update({"val_miou": s["miou"], "per_class_iou": s["per_class_iou"], "classes": classes,
                        "confusion_matrix": plain.tolist()})
        if with_crf is not None:
            s_crf = summary(with_crf, classes)
            metrics.update({"val_miou_crf": s_crf["miou"], "per_class_iou_crf": s_crf["per_class_iou"]})
    with atomic_path(paths.REPORTS / name) as tmp:
        tmp.mkdir()
        charts.confusion_matrix_chart(plain.tolist(), classes, tmp / "confusion_matrix.png", f"{name}: val confusion")
        for image_id, image, predictions, mask in samples:
            panels.labels_panel(image, predictions, mask, classes).save(tmp / f"val_{image_id}.png")
    return write_stage_outputs(name, metrics, plots={f"{name}_train.csv": trainer.history_csv(history),
                                                     f"{name}_per_class.csv": per_class_csv(metrics.get("per_class_iou", {}))},
                               reports={name: name})
