"""Stage 1: train the multi-label classifier (with DRS) on image-level tags only.

Core: `fit` (a model, a data loader and params in; a per-epoch history out) and `average_precision`.
`main` reads the manifest, writes the checkpoint, metrics and training curve.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.classifier import build_localizer
from models.drs import LearnableDRS
from models.registry import LOSSES
from tasks import data, images, paths, tracking, trainer
from tasks.context_paste import ContextPaste
from tasks.io import write_json, write_text
from tasks.runtime import place, resolve_device, save_checkpoint, seed_everything, training_loader


class TaggedImages(Dataset):
    """Training crops with multi-hot targets (background is not a class here)."""

    def __init__(self, root, rows: list[dict], n_fg: int, crop: int, resize_long: tuple[int, int], seed: int):
        self.root, self.rows, self.n_fg, self.crop, self.resize = root, rows, n_fg, crop, resize_long
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = images.resize_long(data.load_image(self.root, row["id"]), images.random_long_side(self.rng, self.resize))
        (image,) = images.flip_and_crop(self.rng, self.crop, image)
        return images.to_tensor(image), multi_hot(row["tags"], self.n_fg)


def multi_hot(tags: list[int], n_fg: int) -> torch.Tensor:
    target = torch.zeros(n_fg)
    target[[t - 1 for t in tags]] = 1.0  # class c (1..C) is output c - 1
    return target


def drs_deltas(model) -> list[float]:
    """Mean delta of each learnable DRS module on the last batch (empty without them)."""
    return [float(m.last_delta.mean()) for m in model.modules()
            if isinstance(m, LearnableDRS) and m.last_delta is not None]


def classification_loss(model, batch):
    images_, targets = batch
    logits, _ = model(images_)
    return LOSSES.get("multilabel_soft_margin")(logits, targets)


def fit(model, loader: DataLoader, cfg: dict, device: torch.device) -> list[dict]:
    def stats():
        deltas = drs_deltas(model)
        return {"drs_delta_mean": float(np.mean(deltas)) if deltas else None}

    paste = cfg["context_paste"]
    loss = ContextPaste(paste, len(loader), cfg["seed"]) if paste["prob"] > 0 else classification_loss
    return trainer.fit(model, loader, cfg, device, loss, "train classifier", stats)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per class (NaN where a class has no positive), ranking by score."""
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = targets[order, c]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps[c] = float((precision * hits).sum() / positives)
    return aps


@torch.no_grad()
def predict_scores(model, root, rows: list[dict], long_side: int, device) -> np.ndarray:
    place(model.eval(), device)
    out = []
    for row in tqdm(rows, desc="classifier val", unit="img", dynamic_ncols=True):
        image = images.resize_long(data.load_image(root, row["id"]), long_side)
        logits, _ = model(place(images.to_tensor(image)[None], device))
        out.append(torch.sigmoid(logits)[0].cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0))


def model_config(cfg: dict, classes: list[str]) -> dict:
    return {"classifier": cfg, "classes": classes}


def main(params: dict) -> dict:
    cfg = params["classifier"]
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = data.read_manifest(paths.MANIFEST)
    train_rows = data.split_rows(manifest, params["data"]["train_split"])
    if cfg["limit"]:
        train_rows = train_rows[: cfg["limit"]]
    n_fg = len(classes) - 1
    model = build_localizer(cfg, n_fg)
    loader = training_loader(
        TaggedImages(root, train_rows, n_fg, cfg["crop_size"], tuple(cfg["resize_long"]), cfg["seed"]), cfg)
    start = time.perf_counter()
    history = fit(model, loader, cfg, device)
    train_seconds = time.perf_counter() - start
    save_checkpoint(paths.CLASSIFIER, model, model_config(cfg, classes))

    # Classifier quality on held-out image-level tags (weak labels only; masks are not touched).
    val_rows = data.split_rows(manifest, params["data"]["val_split"])
    metrics = {"train_seconds": round(train_seconds, 1), "epochs": cfg["epochs"], "n_train": len(train_rows),
               "final_loss": round(history[-1]["loss"], 5), "device": str(device)}
    if val_rows:
        scores = predict_scores(model, root, val_rows, cfg["crop_size"], device)
        targets = np.stack([multi_hot(r["tags"], n_fg).numpy() for r in val_rows])
        aps = average_precision(scores, targets)
        metrics["val_map"] = round(100 * float(np.nanmean(aps)), 2)
        metrics["val_ap"] = {classes[c + 1]: (None if np.isnan(a) else round(100 * a, 2)) for c, a in enumerate(aps)}
    if history[-1]["drs_delta_mean"] is not None:
        metrics["drs_delta_mean"] = round(history[-1]["drs_delta_mean"], 4)
    write_json(metrics, paths.METRICS / "classifier.json")
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    write_text(trainer.history_csv(history), paths.PLOTS / "classifier_train.csv")
    return metrics
