"""Why a localization map scores what it scores: foreground extent against class assignment.

    python benchmarks/map_extent.py RUN_DIR [RUN_DIR ...] [--out NAME]

Each RUN_DIR is a finished stage directory (artifacts/manifest.parquet, artifacts/maps,
metrics/maps.json), e.g. one configuration of benchmarks/ablate_drs.py. At the background
threshold the map's own sweep chose, it splits the errors into
  - extent: foreground vs background as a binary mask (predicted and true foreground fraction,
    precision, recall), and
  - assignment: among pixels both call foreground, the share given the right class;
and how the map's mass sits: mean score inside the true object of a tagged class and outside it.
Masks serve this evaluation only. Writes benchmarks/results/NAME.md and .jsonl (NAME: map_extent).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import RESULTS, write_lines

from dataset import voc
from stores import mapstore
from scoring.sweep import maps_to_labels
from scoring.metrics import IGNORE


def extent(run_dir: Path) -> dict:
    _, classes, root = voc.read_manifest(run_dir / "artifacts/manifest.parquet")
    threshold = json.loads((run_dir / "metrics/maps.json").read_text())["threshold"]
    n = len(classes)
    counts = dict.fromkeys(["valid", "gt_fg", "pred_fg", "both_fg", "both_right"], 0)
    inside, outside = [], []
    for image_id, tags, maps in mapstore.read(run_dir / "artifacts/maps"):
        mask = voc.load_mask(root, image_id, n)
        if mask is None:
            continue
        valid = mask != IGNORE
        pred = maps_to_labels(maps, tags, threshold)
        gt_fg, pred_fg = valid & (mask > 0), valid & (pred > 0)
        counts["valid"] += int(valid.sum())
        counts["gt_fg"] += int(gt_fg.sum())
        counts["pred_fg"] += int(pred_fg.sum())
        counts["both_fg"] += int((gt_fg & pred_fg).sum())
        counts["both_right"] += int((gt_fg & pred_fg & (pred == mask)).sum())
        for j, c in enumerate(tags):
            obj = valid & (mask == c)
            if obj.any() and (valid & ~obj).any():
                inside.append(float(maps[j][obj].mean()))
                outside.append(float(maps[j][valid & ~obj].mean()))
    c = counts
    return {
        "run": run_dir.name, "threshold": threshold,
        "pred_fg_frac": round(c["pred_fg"] / c["valid"], 4), "gt_fg_frac": round(c["gt_fg"] / c["valid"], 4),
        "fg_precision": round(c["both_fg"] / max(c["pred_fg"], 1), 4),
        "fg_recall": round(c["both_fg"] / max(c["gt_fg"], 1), 4),
        "class_accuracy_on_overlap": round(c["both_right"] / max(c["both_fg"], 1), 4),
        "mean_score_inside": round(float(np.mean(inside)), 4), "mean_score_outside": round(float(np.mean(outside)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", default="map_extent")
    args = ap.parse_args()
    rows = [extent(r) for r in args.runs]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    write_lines(f"{args.out}.md", lines)
    (RESULTS / f"{args.out}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
