"""Which peak-response-map settings localize best: one pass of peak backpropagation per rule, many
ways of turning the peak responses into class maps, each scored by the map export's threshold sweep.

    python benchmarks/prm_variants.py RUN_DIR [--limit N] [--out NAME]

RUN_DIR holds artifacts/manifest.parquet and artifacts/classifier.pt (e.g. a benchmark run's
directory). For the first N train images (masks serve the scoring only) and each backprop rule
(gradient, excitation) it backpropagates from up to 5 peaks per tagged class at scale 1.0 once,
then scores: max_peaks 1 / 3 / 5, smoothing sigma 0 / 4 / 8 / 16 px, and projection of the
smoothed map onto felzenszwalb regions (the region's mean) or not; plus the CAM at scale 1.0 as
the baseline on the same images. Writes benchmarks/results/NAME.jsonl (NAME: prm_variants).
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

from common import RESULTS, host

from config.params import load
from dataset import voc
from localization import prm
from localization.cams import multiscale_maps
from scoring.sweep import ThresholdSweep, thresholds
from training import checkpoints

SIGMAS, PEAKS, RULES = (0.0, 4.0, 8.0, 16.0), (1, 3, 5), ("gradient", "excitation")


def region_mean(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    labels = regions.reshape(-1)
    sizes = np.maximum(np.bincount(labels), 1)
    out = [(np.bincount(labels, weights=m.reshape(-1), minlength=len(sizes)) / sizes)[labels].reshape(m.shape)
           for m in maps]
    out = np.stack(out) if out else maps
    return out / np.maximum(out.reshape(len(out), -1).max(1), 1e-5)[:, None, None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=110)
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
    for rule, k, sigma, project in itertools.product(RULES, PEAKS, SIGMAS, (False, True)):
        sweeps[(rule, k, sigma, project)] = ThresholdSweep(grid, len(classes))
    seconds = {rule: 0.0 for rule in RULES}
    seconds["cam"] = 0.0
    window = int(getattr(model, "peak_window", 3))
    for n, row in enumerate(rows):
        image = voc.load_image(root, row["id"])
        mask = voc.load_mask(root, row["id"], len(classes))
        tags, channels = row["tags"], [t - 1 for t in row["tags"]]
        start = time.perf_counter()
        sweeps[("cam", 0, 0.0, False)].add(multiscale_maps(model, image, tags, [1.0], False, device), tags, mask)
        seconds["cam"] += time.perf_counter() - start
        regions = prm.proposal_regions(image, cfg["prm"])
        x = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None]
        for rule in RULES:
            start = time.perf_counter()
            found = prm.peak_responses(model, x, channels, window, max(PEAKS), cfg["prm"]["peak_threshold"], rule)
            seconds[rule] += time.perf_counter() - start
            raw = torch.stack([r for _, _, r in found]).float() if found else torch.zeros(0, *image.shape[:2])
            for sigma in SIGMAS:
                smooth = prm.gaussian_blur(raw, sigma)
                smooth = (smooth / smooth.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).numpy()
                for k in PEAKS:
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
        lines.append(json.dumps({"run": str(args.run_dir), "n_images": len(rows), "rule": rule, "max_peaks": k,
                                 "sigma": sigma, "regions": project, "miou": result["miou"],
                                 "threshold": result["threshold"],
                                 "seconds_per_image": round(seconds[rule] / len(rows), 3), **host()}))
    path = RESULTS / f"{args.out}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for line in sorted(lines, key=lambda s: -json.loads(s)["miou"])[:15]:
        print(line)


if __name__ == "__main__":
    main()
