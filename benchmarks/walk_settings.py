"""The random walk's settings on train scores: a trained affinity refiner's walk over the raw maps of
the first N training images, for each combination of beta, steps, bg_power and radius, scored by the
threshold sweep against the train masks (mIoU at the best threshold, predicted and true foreground
share). The network runs once per image; only the walk repeats.

    python benchmarks/walk_settings.py RUN_DIR [--images 80] --grid '{"beta": [8, 16], "steps": [0, 16, 64]}' [--note TEXT]

RUN_DIR: a pipeline directory with artifacts/manifest.parquet, artifacts/maps and an affinity
artifacts/refiner.pt (refiner.method random_walk). A diagnostic that reads train masks, to choose
the walk's settings on train scores. Appends rows to benchmarks/results/walk_settings.jsonl.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, host

from wsss.dataset import images, voc
from wsss.localization.affinity import walk_features
from wsss.scoring.sweep import ThresholdSweep, thresholds
from wsss.stores import mapstore
from wsss.training import checkpoints

DEFAULTS = {"beta": [8.0], "steps": [256], "bg_power": [2.0], "radius": [5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--grid", default="{}")
    ap.add_argument("--note", default="", help="what the rows' network is, e.g. how its pair labels were made")
    args = ap.parse_args()
    grid = {**DEFAULTS, **json.loads(args.grid)}
    _, classes, root = voc.read_manifest(args.run_dir / "artifacts/manifest.parquet")
    model, _ = checkpoints.load(args.run_dir / "artifacts/refiner.pt", torch.device("cpu"))
    cache = []
    for k, (image_id, tags, maps) in enumerate(mapstore.read(args.run_dir / "artifacts/maps")):
        if k >= args.images:
            break
        with torch.no_grad():
            features = model(images.to_tensor(voc.load_image(root, image_id))[None])
        cache.append((tags, maps, voc.load_mask(root, image_id, len(classes)), features))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for combo in itertools.product(*(grid[k] for k in DEFAULTS)):
        setting, start = dict(zip(DEFAULTS, combo)), time.perf_counter()
        sweep = ThresholdSweep(thresholds(0.05, 0.95, 0.05), len(classes))
        walk = {**setting, "radius": int(setting["radius"]), "steps": int(setting["steps"])}
        for tags, maps, mask, features in cache:
            sweep.add(walk_features(maps, features, walk) if tags else maps, tags, mask)
        r = sweep.result(classes)
        row = {**setting, "images": len(cache), "miou": r["miou"], "threshold": r["threshold"],
               "fg_share_pred": r["fg_share_pred"], "fg_share_true": r["fg_share_true"],
               "seconds": round(time.perf_counter() - start, 1), "note": args.note, "commit": commit, **host()}
        with (RESULTS / "walk_settings.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
