"""How much val mIoU a point of pseudo-label quality buys: the segmenter, with the pipeline's recipe,
trained on the train masks degraded to a target train mIoU in the ways pseudo labels err:
  - spread: every object grows into its context by r pixels (the maps' blobs),
  - swap: a share of the objects of confusable classes take their partner's class,
  - band: a band of w pixels along every class boundary set to 255 (the uncertain margin).
One severity s in [0, 1] sets all three (r = 24 s, swap share = 0.5 s, w = 1 + 4 s); for each target
the severity is found by bisection on the degraded labels' own train mIoU.

    python benchmarks/label_quality_curve.py RUN_DIR --targets 50 60 70 85 [--seed 0]
        [--labels-only]
    python benchmarks/label_quality_curve.py --plot     # docs/images/label_quality_curve.png

RUN_DIR: a pipeline directory with artifacts/manifest.parquet (the dataset). A DIAGNOSTIC: it
trains on ground-truth masks and is never part of the pipeline. Each target trains in
RUN_DIR/quality_<target>; rows go to benchmarks/results/label_quality_curve.jsonl (target, the
labels' train mIoU, the severity, val mIoU, seconds). The pipeline's own pseudo labels go on the
same axis from their rows in seed_methods.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import REPO, RESULTS, host, params_for, run_stages

from wsss.dataset import voc
from wsss.scoring.metrics import IGNORE, confusion, mean_iou
from wsss.stores import labelstore

# VOC class pairs a classifier's maps confuse (the val confusion matrices of the weak segmenter)
CONFUSABLE = [("cat", "dog"), ("cow", "sheep"), ("horse", "cow"), ("bus", "car"), ("chair", "sofa"),
              ("bicycle", "motorbike"), ("boat", "aeroplane"), ("diningtable", "chair"), ("bird", "aeroplane")]


def degrade(mask: np.ndarray, severity: float, partner: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    out = mask.copy()
    present = [c for c in np.unique(mask) if c not in (0, IGNORE)]
    for c in present:   # swap first, so a spread object spreads with its (maybe wrong) class
        if c in partner and rng.random() < 0.5 * severity:
            out[mask == c] = partner[c]
    radius = int(round(24 * severity))
    objects = (out != 0) & (out != IGNORE)
    if radius and objects.any():   # each background pixel within r of an object takes the nearest object's class
        dist, (iy, ix) = ndimage.distance_transform_edt(~objects, return_indices=True)
        reach = (dist <= radius) & (out == 0)
        out[reach] = out[iy[reach], ix[reach]]
    width = int(round(1 + 4 * severity))
    edges = np.zeros(out.shape, bool)
    edges[:, 1:] |= out[:, 1:] != out[:, :-1]
    edges[1:] |= out[1:] != out[:-1]
    out[ndimage.binary_dilation(edges, iterations=width // 2) if width > 1 else edges] = IGNORE
    out[mask == IGNORE] = IGNORE
    return out


def degraded_set(masks: dict, severity: float, partner: dict, seed: int, n: int) -> tuple[dict, float]:
    rng = np.random.default_rng(seed)
    labels = {i: degrade(m, severity, partner, rng) for i, m in masks.items()}
    conf = sum(confusion(m, labels[i], n) for i, m in masks.items())
    return labels, 100 * mean_iou(conf)


def calibrate(masks, target, partner, seed, n) -> tuple[float, dict, float]:
    lo, hi = 0.0, 1.0
    for _ in range(10):
        mid = (lo + hi) / 2
        labels, miou = degraded_set(masks, mid, partner, seed, n)
        if abs(miou - target) < 0.5:
            return mid, labels, miou
        lo, hi = (mid, hi) if miou > target else (lo, mid)
    return mid, labels, miou


def plot(out: Path) -> None:
    """Val mIoU against train label mIoU: the degraded masks, the masks themselves (the reference) and
    the pipeline's own pseudo labels (seed_methods.jsonl rows with a val score, mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted((r["labels_miou"], r["val_miou"]) for r in map(json.loads, (RESULTS / "label_quality_curve.jsonl").open()))
    pseudo: dict = {}
    for r in map(json.loads, (RESULTS / "seed_methods.jsonl").open()):
        if r.get("val_miou") and r.get("labels_miou") and r["method"] in ("affinity", "rounds+superpixels"):
            pseudo.setdefault((r["method"], r["labels_miou"]), []).append(r["val_miou"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*curve), "o-", label="train masks, degraded (one seed)")
    for (method, labels), vals in pseudo.items():
        ax.plot(labels, sum(vals) / len(vals), "s", label=f"pseudo labels: {method} ({len(vals)} seeds)")
    ax.set_xlabel("train label mIoU")
    ax.set_ylabel("segmenter val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--plot", action="store_true", help="only draw docs/images/label_quality_curve.png")
    ap.add_argument("--targets", type=float, nargs="+", default=[50, 60, 70, 85])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels-only", action="store_true", help="calibrate and print, train nothing")
    args = ap.parse_args()
    if args.plot:
        plot(REPO / "docs/images/label_quality_curve.png")
        return
    table, classes, root = voc.read_manifest(args.run_dir / "artifacts/manifest.parquet")
    names = {c: i for i, c in enumerate(classes)}
    partner = {}
    for a, b in CONFUSABLE:
        if a in names and b in names:
            partner.setdefault(names[a], names[b])
            partner.setdefault(names[b], names[a])
    masks = {r["id"]: voc.load_mask(root, r["id"], len(classes)) for r in voc.split_rows(table, "train") if r["has_mask"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for target in args.targets:
        severity, labels, miou = calibrate(masks, target, partner, args.seed, len(classes))
        ignored = float(np.mean([np.mean(v == IGNORE) for v in labels.values()]))
        print(f"target {target}: severity {severity:.3f}, labels train mIoU {miou:.2f}, ignored {100 * ignored:.1f}%")
        if args.labels_only:
            continue
        work = args.run_dir / f"quality_{int(target)}"
        (work / "artifacts").mkdir(parents=True, exist_ok=True)
        if not (work / "artifacts/manifest.parquet").exists():
            os.symlink((args.run_dir / "artifacts/manifest.parquet").resolve(), work / "artifacts/manifest.parquet")
        labelstore.write(sorted(labels.items()), work / "artifacts/pseudo_labels", 256)
        start = time.perf_counter()
        out = run_stages(["train_segmenter"], params_for(str(root), [f"segmenter.seed={args.seed}"]), work)
        seg = out["train_segmenter"]["result"]
        row = {"target": target, "labels_miou": round(miou, 2), "ignored_fraction": round(ignored, 4),
               "severity": round(severity, 4), "seed": args.seed, "val_miou": seg.get("val_miou"),
               "seconds": round(time.perf_counter() - start, 1), "commit": commit, **host()}
        with (RESULTS / "label_quality_curve.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
