"""Stage 1: train the multi-label classifier (with DRS) on image-level tags only.

The core lives in wsss/localization/classification.py (targets, loss, fit, average precision); this
module reads the manifest and writes the checkpoint, metrics and training curve.
"""
from __future__ import annotations

import time

import numpy as np

from wsss.config import paths
from wsss.dataset import voc
from wsss.dataset.crops import TrainingCrops
from wsss.localization import group
from wsss.localization.classification import (TagTarget, average_precision, build_classifier, fit, multi_hot,
                                         predict_scores)
from models.networks import to_config
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import checkpoints, distributed, trainer
from wsss.training.runtime import resolve_device, seed_everything, training_loader


@distributed.stage   # also under torchrun: every rank trains, rank 0 does the rest
def main(params: dict) -> dict:
    cfg = params["classifier"]
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    train_rows = voc.split_rows(manifest, params["data"]["train_split"])
    if cfg["limit"]:
        train_rows = train_rows[: cfg["limit"]]
    n_fg = len(classes) - 1
    model = build_classifier(cfg, n_fg)
    target = TagTarget({r["id"]: r["tags"] for r in train_rows}, n_fg)
    crops = TrainingCrops(root, [r["id"] for r in train_rows], target, cfg["crop_size"], cfg["resize_long"], cfg["seed"])
    if cfg["group"]["enabled"]:   # batches of image groups sharing a tag (group-wise semantic mining)
        loader = group.loader(crops, [r["tags"] for r in train_rows], cfg)
    else:
        loader = training_loader(crops, cfg)
    start = time.perf_counter()
    history = fit(model, loader, cfg, device)
    train_seconds = time.perf_counter() - start
    checkpoints.save(paths.CLASSIFIER, model, to_config("localizer", cfg, classes))

    # Classifier quality on held-out image-level tags (weak labels only; masks are not touched).
    val_rows = voc.split_rows(manifest, params["data"]["val_split"])
    metrics = {"train_seconds": round(train_seconds, 1), "epochs": cfg["epochs"], "n_train": len(train_rows),
               "final_loss": round(history[-1]["loss"], 5), "device": str(device),
               "init": cfg["init"], **(group.batch_metrics(loader) if cfg["group"]["enabled"] else
                                       distributed.batch_metrics(loader))}
    if val_rows:
        scores = predict_scores(model, root, val_rows, cfg["crop_size"], device)
        targets = np.stack([multi_hot(r["tags"], n_fg).numpy() for r in val_rows])
        aps = average_precision(scores, targets)
        metrics["val_map"] = round(100 * float(np.nanmean(aps)), 2)
        metrics["val_ap"] = {classes[c + 1]: (None if np.isnan(a) else round(100 * a, 2)) for c, a in enumerate(aps)}
    if history[-1]["drs_delta_mean"] is not None:
        metrics["drs_delta_mean"] = round(history[-1]["drs_delta_mean"], 4)
    return write_stage_outputs("classifier", metrics, plots={"classifier_train.csv": trainer.history_csv(history)})
