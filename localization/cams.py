"""Localization maps from a CAM-style network (the classifier, or the refiner that learned its maps).

Core: `multiscale_maps` (model, image, tags in; k x H x W maps in [0, 1] out), batched over the
flips of each scale. `export` streams them into packed shards, scores them against masks where
there are masks and writes a few overlays; the raw and the refined map stages both call it. With
method "prm" (the raw maps' maps.method) the maps are peak response maps instead, and the
instances found with them are stored too (localization/prm.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import paths
from dataset import voc
from localization.prm import PrmExport
from scoring.metrics import per_class_csv
from scoring.sweep import ThresholdSweep, thresholds
from stores.atomic import atomic_path
from stores.mapstore import write as write_maps
from tracking import panels
from tracking.outputs import write_stage_outputs
from training.inference import sum_over_views
from training.runtime import autocast, resolve_precision


@torch.no_grad()
def multiscale_maps(model, image: np.ndarray, tags: list[int], scales: list[float], flip: bool,
                    device: torch.device) -> np.ndarray:
    """ReLU'd class maps summed over scales (and horizontal flips) at image size, each class
    scaled to max 1.

    Raw and refined maps are both scaled this way, so a background threshold means the same for
    both: a fraction of the class's own peak. (Refined maps regress towards the mean under MSE;
    unscaled, their best threshold sat half as high as the raw maps'.)
    """
    h, w = image.shape[:2]
    if not tags:
        return np.zeros((0, h, w), np.float32)
    channels = torch.tensor([t - 1 for t in tags], device=device)
    total = sum_over_views(lambda batch: torch.relu(model(batch)[1])[:, channels], image, scales, flip, device)
    total = total / total.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]
    return total.cpu().numpy()


def export(model, classes: list[str], params: dict, device, store: Path, name: str, method: str = "cam") -> dict:
    """Maps for the training split into `store`; metrics/<name>.json, plots/<name>_sweep.csv, reports/<name>/.
    method prm: peak response maps, plus `store`/instances.parquet and instance overlays and a
    contact sheet in reports/<name>/."""
    cfg = params["maps"]
    manifest, manifest_classes, root = voc.read_manifest(paths.MANIFEST)
    if manifest_classes != classes:
        raise ValueError(f"{name}: the model was trained on other classes than the manifest lists; rerun training")
    rows = voc.split_rows(manifest, params["data"]["train_split"])
    sweep = ThresholdSweep(thresholds(cfg["threshold_start"], cfg["threshold_stop"], cfg["threshold_step"]), len(classes))
    report_dir = paths.REPORTS / name
    evaluated, start = 0, time.perf_counter()
    prm = PrmExport(model, classes, cfg, device) if method == "prm" else None
    prm_metrics: dict = {}

    def records():
        nonlocal evaluated
        with atomic_path(report_dir) as tmp_reports:
            tmp_reports.mkdir()
            for i, row in enumerate(tqdm(rows, desc=f"export {name}", unit="img", dynamic_ncols=True)):
                image = voc.load_image(root, row["id"])
                mask = voc.load_mask(root, row["id"], len(classes)) if row["has_mask"] else None
                if prm:
                    maps, found = prm.maps(row["id"], image, row["tags"], mask)
                else:
                    with autocast(device, cfg["precision"]):
                        maps = multiscale_maps(model, image, row["tags"], cfg["scales"], cfg["flip"], device)
                if mask is not None:
                    sweep.add(maps, row["tags"], mask)
                    evaluated += 1
                if i < cfg["n_overlays"]:
                    panels.maps_panel(image, maps, row["tags"], mask, classes).save(tmp_reports / f"{row['id']}.png")
                    if prm:
                        panels.instances_panel(image, found, mask, classes).save(tmp_reports / f"{row['id']}_instances.png")
                yield row["id"], row["tags"], maps
            if prm:
                prm_metrics.update(prm.write_reports(tmp_reports))

    n = write_maps(records(), store, cfg["shard_size"])
    if prm:
        prm_metrics.update(prm.write_store(store))
    seconds = time.perf_counter() - start
    metrics = {"n_images": n, "n_evaluated": evaluated, "seconds": round(seconds, 1),
               "seconds_per_image": round(seconds / max(n, 1), 3), "method": method,
               "scales": cfg["scales"], "flip": cfg["flip"],
               "precision": "fp32" if prm else resolve_precision(device, cfg["precision"]), **prm_metrics}
    sweep_csv, per_class = "threshold,miou\n", {}
    if evaluated:  # without masks there is nothing to score; the plots stay empty
        result = sweep.result(classes)
        metrics = {**result, **metrics}
        sweep_csv += "".join(f"{s['threshold']},{s['miou']}\n" for s in result["sweep"])
        per_class = result["per_class_iou"]
    return write_stage_outputs(name, metrics,
                               plots={f"{name}_sweep.csv": sweep_csv, f"{name}_per_class.csv": per_class_csv(per_class)},
                               reports={name: f"{name}_overlays"})
