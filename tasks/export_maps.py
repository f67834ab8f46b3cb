"""Stage 2: class activation maps for every tagged class of every training image.

Core: `multiscale_cams` (model, image, tags in; k x H x W maps in [0, 1] out), batched over the
flips of each scale. `main` streams them into packed shards, scores them against masks where
there are masks (metrics/maps.json) and writes a few overlays.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.classifier import build_localizer
from tasks import data, images, paths, tracking
from tasks.evaluate import ThresholdSweep, thresholds
from tasks.io import atomic_path, write_json, write_text
from tasks.mapstore import write as write_maps
from tasks.runtime import load_checkpoint, resolve_device


@torch.no_grad()
def multiscale_cams(model, image: np.ndarray, tags: list[int], scales: list[float], flip: bool,
                    device: torch.device) -> np.ndarray:
    """Sum of ReLU'd CAMs over scales (and horizontal flips), each class scaled to max 1."""
    h, w = image.shape[:2]
    if not tags:
        return np.zeros((0, h, w), np.float32)
    channels = torch.tensor([t - 1 for t in tags], device=device)
    total = torch.zeros((len(tags), h, w), device=device)
    for scale in scales:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        x = images.to_tensor(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)))[None].to(device)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        cams = model.cams(batch)[:, channels]
        if flip:
            cams = torch.cat([cams[:1], cams[1:].flip(-1)])
        total += images.upsample(cams, (h, w)).sum(0)
    peak = total.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]
    return (total / peak).cpu().numpy()


def load_localizer(device: torch.device):
    ckpt = load_checkpoint(paths.CLASSIFIER)
    cfg, classes = ckpt["config"]["classifier"], ckpt["config"]["classes"]
    # The weights come from the checkpoint, so the backbone's ImageNet weights need not be loaded.
    model = build_localizer({**cfg, "pretrained": False}, len(classes) - 1)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval().to(device), classes


def overlay(image: np.ndarray, maps: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Image | image with the strongest class map as a heat map | ground truth (if any)."""
    heat = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    panels = [image, images.blend(image, images.colourise(heat))]
    if mask is not None:
        from tasks.demo import palette

        pal = np.array(palette(), np.uint8).reshape(-1, 3)
        panels.append(pal[mask])
    return np.concatenate(panels, axis=1)


def main(params: dict) -> dict:
    cfg = params["maps"]
    device = resolve_device(params["classifier"]["device"])
    model, classes = load_localizer(device)
    manifest, manifest_classes, root = data.read_manifest(paths.MANIFEST)
    if manifest_classes != classes:
        raise ValueError("the classifier was trained on other classes than the manifest lists: rerun train_classifier")
    rows = data.split_rows(manifest, params["data"]["train_split"])
    sweep = ThresholdSweep(thresholds(cfg["threshold_start"], cfg["threshold_stop"], cfg["threshold_step"]), len(classes))
    report_dir = paths.REPORTS / "maps"
    evaluated, start = 0, time.perf_counter()

    def records():
        nonlocal evaluated
        with atomic_path(report_dir) as tmp_reports:
            tmp_reports.mkdir()
            for i, row in enumerate(tqdm(rows, desc="export maps", unit="img", dynamic_ncols=True)):
                image = data.load_image(root, row["id"])
                maps = multiscale_cams(model, image, row["tags"], cfg["scales"], cfg["flip"], device)
                mask = data.load_mask(root, row["id"], len(classes)) if row["has_mask"] else None
                if mask is not None:
                    sweep.add(maps, row["tags"], mask)
                    evaluated += 1
                if i < cfg["n_overlays"]:
                    Image.fromarray(overlay(image, maps, mask)).save(tmp_reports / f"{row['id']}.png")
                yield row["id"], row["tags"], maps

    n = write_maps(records(), paths.MAPS, cfg["shard_size"])
    metrics = {"n_images": n, "n_evaluated": evaluated, "seconds": round(time.perf_counter() - start, 1),
               "scales": cfg["scales"], "flip": cfg["flip"]}
    sweep_csv = "threshold,miou\n"
    if evaluated:  # without masks there is nothing to score; the plot stays empty
        result = sweep.result(classes)
        metrics = {**result, **metrics}
        sweep_csv += "".join(f"{s['threshold']},{s['miou']}\n" for s in result["sweep"])
    write_text(sweep_csv, paths.PLOTS / "maps_sweep.csv")
    write_json(metrics, paths.METRICS / "maps.json")
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tracking.log_artifact(report_dir, "overlays")
    return metrics
