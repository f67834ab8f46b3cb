"""Which peak-response-map settings localize best: one pass of peak backpropagation per rule, many
ways of turning the peak responses into class maps, each scored by the map export's threshold sweep.

    python benchmarks/prm_variants.py RUN_DIR [--limit N] [--scale S] [--rules R ...] [--out NAME]

RUN_DIR holds artifacts/manifest.parquet and artifacts/classifier.pt (e.g. a benchmark run's
directory). For the first N train images (masks serve the scoring only) and each backprop rule
(gradient, excitation) it backpropagates from up to max(--peaks) peaks per tagged class at one
scale once, then scores: max_peaks 1 / 3 / 5, smoothing sigma 0 / 4 / 8 / 16 px (or the given
grids), and projection of the
smoothed map onto felzenszwalb regions (the region's mean) or not; plus the CAM at the same scale
as the baseline on the same images. Appends to benchmarks/results/NAME.jsonl (NAME: prm_variants).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import RESULTS, host

from config.params import load
from dataset import voc
from localization import prm
from localization.cams import multiscale_maps
from scoring.sweep import ThresholdSweep, thresholds
from training import checkpoints

SIGMAS, PEAKS, RULES = (0.0, 4.0, 8.0, 16.0), (1, 3, 5), ("gradient", "excitation")


def region_mean(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """localization.prm.region_mean, scaled to max 1 per class as the export does."""
    out = prm.region_mean(maps, regions)
    return out / np.maximum(out.reshape(len(out), -1).max(1), 1e-5)[:, None, None] if len(out) else out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=110)
    parser.add_argument("--scale", type=float, default=1.0, help="the one scale, of CAM and PRM alike")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--peaks", nargs="+", type=int, default=list(PEAKS), help="max_peaks values")
    parser.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS))
    parser.add_argument("--peak-threshold", type=float, default=None, help="default: params.yaml's")
    parser.add_argument("--out", default="prm_variants")
    args = parser.parse_args()
    params = load(Path(__file__).resolve().parent.parent / "params.yaml", [])
    cfg = params["maps"]
    device = torch.device("cpu")
    os.chdir(args.run_dir)
    model, config = checkpoints.load("artifacts/classifier.pt", device)
    classes = config["classes"]
    manifest, _, root = voc.read_manifest("artifacts/manifest.parquet")
    rows = [r for r in voc.split_rows(manifest, "train") if r["has_mask"]][: args.limit]
    grid = thresholds(cfg["threshold_start"], cfg["threshold_stop"], cfg["threshold_step"])
    sweeps = {("cam", 0, 0.0, False): ThresholdSweep(grid, len(classes))}
    rules, peaks_grid, sigmas = args.rules, args.peaks, args.sigmas
    peak_threshold = cfg["prm"]["peak_threshold"] if args.peak_threshold is None else args.peak_threshold
    for rule, k, sigma, project in itertools.product(rules, peaks_grid, sigmas, (False, True)):
        sweeps[(rule, k, sigma, project)] = ThresholdSweep(grid, len(classes))
    seconds = {rule: 0.0 for rule in rules}
    seconds["cam"] = 0.0
    window = int(getattr(model, "peak_window", 3))
    for n, row in enumerate(rows):
        image = voc.load_image(root, row["id"])
        mask = voc.load_mask(root, row["id"], len(classes))
        tags, channels = row["tags"], [t - 1 for t in row["tags"]]
        start = time.perf_counter()
        sweeps[("cam", 0, 0.0, False)].add(multiscale_maps(model, image, tags, [args.scale], False, device), tags, mask)
        seconds["cam"] += time.perf_counter() - start
        regions = prm.proposal_regions(image, cfg["prm"])
        h, w = image.shape[:2]
        small = np.asarray(Image.fromarray(image).resize((round(w * args.scale), round(h * args.scale)), Image.BILINEAR))
        x = torch.from_numpy(np.array(small, np.float32)).permute(2, 0, 1)[None]
        for rule in rules:
            start = time.perf_counter()
            found = prm.peak_responses(model, x, channels, window, max(peaks_grid), peak_threshold, rule)
            seconds[rule] += time.perf_counter() - start
            raw = torch.stack([r for _, _, r in found]).float() if found else torch.zeros(0, *small.shape[:2])
            raw = prm._resize(raw, (h, w)) if len(raw) else torch.zeros(0, h, w)
            for sigma in sigmas:
                smooth = prm.gaussian_blur(raw, sigma)
                smooth = (smooth / smooth.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).numpy()
                for k in peaks_grid:
                    maps = np.zeros((len(tags),) + image.shape[:2], np.float32)
                    rank = {c: 0 for c in channels}
                    for (c, _, _), r in zip(found, smooth):
                        if rank[c] < k:
                            maps[channels.index(c)] = np.maximum(maps[channels.index(c)], r)
                        rank[c] += 1
                    sweeps[(rule, k, sigma, False)].add(maps, tags, mask)
                    sweeps[(rule, k, sigma, True)].add(region_mean(maps, regions), tags, mask)
        print(n + 1, {k: round(v / (n + 1), 2) for k, v in seconds.items()}, flush=True)
    lines = []
    for (rule, k, sigma, project), sweep in sweeps.items():
        result = sweep.result(classes)
        if rule == "cam":
            k = sigma = project = None
        lines.append(json.dumps({"run": str(args.run_dir), "n_images": len(rows), "scale": args.scale, "rule": rule, "max_peaks": k,
                                 "peak_threshold": None if rule == "cam" else peak_threshold,
                                 "sigma": sigma, "regions": project, "miou": result["miou"],
                                 "threshold": result["threshold"],
                                 "seconds_per_image": round(seconds[rule] / len(rows), 3), **host()}))
    path = RESULTS / f"{args.out}.jsonl"
    with path.open("a") as fh:   # appended: one file across scales and classifiers
        fh.write("\n".join(lines) + "\n")
    for line in sorted(lines, key=lambda s: -json.loads(s)["miou"])[:15]:
        print(line)


if __name__ == "__main__":
    main()
