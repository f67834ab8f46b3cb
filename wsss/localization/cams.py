"""Localization maps from a CAM-style network (the classifier, or the refiner that learned its maps).

Core: `multiscale_maps` (model, image, tags in; k x H x W maps in [0, 1] out), batched over the
flips of each scale. `export` writes them into packed shards, one chunk per shard
(`export_chunk`, here or on Dask workers: wsss/scaleout/), scores them against masks where there are
masks (the chunks' threshold-sweep counts, summed) and writes a few overlays; the raw and the
refined map stages both call it. With
method "prm" (the raw maps' maps.method) the maps are peak response maps instead, and the
instances found with them are stored too (wsss/localization/prm.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wsss.config import paths
from wsss.dataset import voc
from wsss.localization import group
from wsss.localization.prm import PrmExport
from wsss.localization.propagation import WalkExport
from wsss.scoring.metrics import per_class_csv
from wsss.scoring.sweep import ThresholdSweep, thresholds
from wsss.scaleout.engine import EngineError, open_engine, progress
from wsss.stores import mapstore
from wsss.stores.atomic import atomic_file, atomic_path, remove_partials
from wsss.tracking import panels
from wsss.tracking.outputs import write_stage_outputs
from wsss.training.checkpoints import CheckpointRef
from wsss.training.inference import sum_over_views
from wsss.training.runtime import autocast, resolve_device, resolve_precision, wants_gpu


@torch.no_grad()
def multiscale_maps(model, image: np.ndarray, tags: list[int], scales: list[float], flip: bool,
                    device: torch.device, context: list[torch.Tensor] | None = None) -> np.ndarray:
    """ReLU'd class maps summed over scales (and horizontal flips) at image size, each class
    scaled to max 1. context: a group classifier's neighbour features that join every view's group
    (wsss/localization/group.py; None: the network alone, a group classifier's group of one).

    Raw and refined maps are both scaled this way, so a background threshold means the same for
    both: a fraction of the class's own peak. (Refined maps regress towards the mean under MSE;
    unscaled, their best threshold sat half as high as the raw maps'.)
    """
    h, w = image.shape[:2]
    if not tags:
        return np.zeros((0, h, w), np.float32)
    channels = torch.tensor([t - 1 for t in tags], device=device)
    run = model if context is None else (lambda batch: model(batch, context=context))
    total = sum_over_views(lambda batch: torch.relu(run(batch)[1])[:, channels], image, scales, flip, device)
    total = total / total.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]
    return total.cpu().numpy()


@dataclass
class ExportChunk:
    """Map store shard `index`: the maps of `rows`, images `first`.. of the split."""
    index: int
    first: int
    rows: list[dict]              # manifest rows: id, tags, has_mask
    root: str
    classes: list[str]
    cfg: dict                     # maps
    network: CheckpointRef
    prm: PrmExport | None         # method prm (engine local only: it gathers instances in this process)
    store_dir: str                # the store's temporary folder
    reports_dir: str              # overlays of the first cfg["n_overlays"] images
    neighbours: dict | None = None   # group classifier, maps.group_export neighbours: id -> the ids grouped with it
    walk: WalkExport | None = None   # an affinity network: the raw maps walk over its affinities


def export_chunk(task: ExportChunk, imap=None) -> dict:
    """Maps of one chunk into its shard, its overlays; returns its counts and threshold-sweep confusions."""
    model, _, device = task.network.get()
    cfg, n = task.cfg, len(task.classes)
    sweep = ThresholdSweep(thresholds(cfg["threshold_start"], cfg["threshold_stop"], cfg["threshold_step"]), n)
    evaluated, reports = 0, Path(task.reports_dir)
    raw = task.walk.load([row["id"] for row in task.rows]) if task.walk else None

    def encoded():   # streamed into the shard a row group at a time, not held for the whole chunk
        nonlocal evaluated
        for k, row in enumerate(progress(task.rows, len(task.rows), f"maps, shard {task.index}")):
            image = voc.load_image(task.root, row["id"])
            mask = voc.load_mask(task.root, row["id"], n) if row["has_mask"] else None
            if task.prm:
                maps, found = task.prm.maps(row["id"], image, row["tags"], mask)
            elif task.walk:
                stored_classes, stored = raw[row["id"]]
                if list(stored_classes) != list(row["tags"]):
                    raise ValueError(f"image {row['id']!r}: the raw maps hold classes {stored_classes}, the manifest "
                                     f"tags {row['tags']}: rerun export_maps")
                with autocast(device, cfg["precision"]):
                    maps = task.walk.maps(model, image, row["tags"], stored, device)
            else:
                with autocast(device, cfg["precision"]):
                    ctx = None if task.neighbours is None else group.context(model, task.root, task.neighbours[row["id"]],
                                                                             device)
                    maps = multiscale_maps(model, image, row["tags"], cfg["scales"], cfg["flip"], device, ctx)
            if mask is not None:
                sweep.add(maps, row["tags"], mask)
                evaluated += 1
            if task.first + k < cfg["n_overlays"]:
                with atomic_file(reports / f"{row['id']}.png") as tmp:
                    panels.maps_panel(image, maps, row["tags"], mask, task.classes).save(tmp, format="PNG")
                if task.prm:
                    with atomic_file(reports / f"{row['id']}_instances.png") as tmp:
                        panels.instances_panel(image, found, mask, task.classes).save(tmp, format="PNG")
            yield mapstore.encode(row["id"], row["tags"], maps)

    count = mapstore.write_part(encoded(), task.store_dir, task.index)
    return {"count": count, "evaluated": evaluated, "sweep": sweep.conf}


def export(network: CheckpointRef, params: dict, store: Path, name: str, method: str = "cam",
           walk: WalkExport | None = None) -> dict:
    """Maps for the training split into `store`; metrics/<name>.json, plots/<name>_sweep.csv, reports/<name>/.
    One chunk per store shard, on the engine params.yaml's `scaleout` names (wsss/scaleout/engine.py).
    method prm: peak response maps, plus `store`/instances.parquet and instance overlays and a
    contact sheet in reports/<name>/ (engine local only)."""
    cfg, scaleout = params["maps"], params["scaleout"]
    if method == "prm" and scaleout["engine"] == "dask":
        raise EngineError("maps.method prm runs on scaleout.engine local only (its instances and contact sheet "
                          "are gathered in one process): set scaleout.engine=local for this stage")
    manifest, manifest_classes, root = voc.read_manifest(paths.MANIFEST)
    if scaleout["engine"] == "local":   # dask: only the workers load the network
        network.get()
    classes = network.config()["classes"]
    if manifest_classes != classes:
        raise ValueError(f"{name}: the model was trained on other classes than the manifest lists; rerun training")
    rows = voc.split_rows(manifest, params["data"]["train_split"])
    sweep = ThresholdSweep(thresholds(cfg["threshold_start"], cfg["threshold_stop"], cfg["threshold_step"]), len(classes))
    n, evaluated, start = 0, 0, time.perf_counter()
    group_metrics, neighbours = {}, None
    if (network.config()["network"].get("group") or {}).get("enabled"):   # a group-wise classifier
        group_metrics["group_export"] = cfg["group_export"]
        if cfg["group_export"] == "neighbours":
            if method == "prm":
                raise group.GroupExportError("maps.group_export neighbours runs with maps.method cam (PRM's peaks come from "
                                  "each image alone): set maps.group_export=single or maps.method=cam")
            begun = time.perf_counter()
            model, _, device = network.get()   # the descriptors of every training image, here (also on dask)
            neighbours = group.neighbour_table(model, root, rows, device)
            group_metrics["neighbour_seconds"] = round(time.perf_counter() - begun, 1)
            group_metrics["alone"] = sum(not v for v in neighbours.values())   # no image shares a tag with them
    prm = PrmExport(network.get()[0], classes, cfg, network.get()[2]) if method == "prm" else None
    prm_metrics: dict = {}
    gpu = wants_gpu(network.device)
    with open_engine(scaleout, gpu=gpu) as engine, atomic_path(paths.REPORTS / name) as tmp_reports, \
            atomic_path(store) as tmp_store:
        tmp_reports.mkdir()
        tmp_store.mkdir()
        tasks = [ExportChunk(k, first, chunk, str(Path(root).resolve()), classes, cfg, network, prm,
                             str(tmp_store.resolve()), str(tmp_reports.resolve()),
                             None if neighbours is None else {r["id"]: neighbours[r["id"]] for r in chunk}, walk)
                 for k, (first, chunk) in enumerate(engine.split(rows, cfg["shard_size"]))]
        for part in engine.run(export_chunk, tasks, f"export {name}", gpu=gpu):
            n += part["count"]
            evaluated += part["evaluated"]
            sweep.conf += part["sweep"]
        if prm:
            prm_metrics.update(prm.write_reports(tmp_reports))
        remove_partials(tmp_store)   # what a killed worker left under a temporary name
        remove_partials(tmp_reports)
        engine_name = engine.name
    if prm:
        prm_metrics.update(prm.write_store(store))
    seconds = time.perf_counter() - start
    device = network.held[2] if network.held else resolve_device(network.device)
    metrics = {"n_images": n, "n_evaluated": evaluated, "seconds": round(seconds, 1),
               "seconds_per_image": round(seconds / max(n, 1), 3), "method": method,
               "scales": [1.0] if walk else cfg["scales"], "flip": False if walk else cfg["flip"], "engine": engine_name,
               "precision": "fp32" if prm else resolve_precision(device, cfg["precision"]), **prm_metrics,
               **group_metrics}
    sweep_csv, per_class = "threshold,miou\n", {}
    if evaluated:  # without masks there is nothing to score; the plots stay empty
        result = sweep.result(classes)
        metrics = {**result, **metrics}
        sweep_csv += "".join(f"{s['threshold']},{s['miou']}\n" for s in result["sweep"])
        per_class = result["per_class_iou"]
    return write_stage_outputs(name, metrics,
                               plots={f"{name}_sweep.csv": sweep_csv, f"{name}_per_class.csv": per_class_csv(per_class)},
                               reports={name: f"{name}_overlays"})
