"""How right the random-walk refiner's pair labels are: for each (fg_threshold, bg_threshold), the
confident labels of the raw maps (wsss/localization/affinity.py, confident_labels) against the train
masks: the share of pixels labelled, the precision of the foreground and background labels, and
the share of labelled pairs at offset (0, 1) whose same/different call is right.

    python benchmarks/pair_labels.py RUN_DIR [--fg 0.3 0.4 0.5 0.6] [--bg 0.05 0.1 0.15 0.2] [--crf] [--limit N]

RUN_DIR: a pipeline directory with artifacts/manifest.parquet and artifacts/maps. A diagnostic that
reads train masks, to choose the thresholds on train scores; never part of the pipeline. --crf: the
regions snapped by params.yaml's pseudo_labels.crf (refiner.affinity.crf). Appends rows to
benchmarks/results/pair_labels.jsonl.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from common import RESULTS, REPO, host, params_for

from wsss.dataset import voc
from wsss.localization.affinity import IGNORE, confident_labels, crf_confident_labels
from wsss.stores import mapstore


def score(run: Path, fgs: list[float], bgs: list[float], crf: dict | None, limit: int) -> list[dict]:
    _, classes, root = voc.read_manifest(run / "artifacts/manifest.parquet")
    keys = [(f, b) for f in fgs for b in bgs if b < f]
    c = {k: np.zeros(6, np.int64) for k in keys}   # valid, labelled, fg, fg right, bg, bg right
    pairs = {k: np.zeros(2, np.int64) for k in keys}   # labelled valid pairs, right
    for n, (image_id, tags, maps) in enumerate(mapstore.read(run / "artifacts/maps")):
        mask = voc.load_mask(root, image_id, len(classes))
        if mask is None or (limit and n >= limit):
            continue
        image = voc.load_image(root, image_id) if crf else None
        valid = mask != IGNORE
        for k in keys:
            lab = crf_confident_labels(image, maps, tags, *k, crf) if crf else confident_labels(maps, tags, *k)
            known = valid & (lab != IGNORE)
            fg, bg = known & (lab > 0), known & (lab == 0)
            c[k] += [valid.sum(), known.sum(), fg.sum(), (fg & (lab == mask)).sum(), bg.sum(), (bg & (mask == 0)).sum()]
            a, b, ma, mb = lab[:, :-1], lab[:, 1:], mask[:, :-1], mask[:, 1:]
            ok = (a != IGNORE) & (b != IGNORE) & (ma != IGNORE) & (mb != IGNORE) & ((a != b) | (ma != mb) | (a != ma))
            pairs[k] += [ok.sum(), (ok & ((a == b) == (ma == mb))).sum()]
    rows = []
    for (f, b), (valid, known, fg, fg_ok, bg, bg_ok) in c.items():
        rows.append({"fg_threshold": f, "bg_threshold": b, "labelled": round(100 * known / valid, 2),
                     "fg_precision": round(100 * fg_ok / max(fg, 1), 2), "bg_precision": round(100 * bg_ok / max(bg, 1), 2),
                     "pair_accuracy": round(100 * pairs[(f, b)][1] / max(pairs[(f, b)][0], 1), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--fg", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--bg", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    ap.add_argument("--crf", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="the first N images only")
    args = ap.parse_args()
    crf = params_for(".", [])["pseudo_labels"]["crf"] if args.crf else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    rows = score(args.run_dir, args.fg, args.bg, crf, args.limit)
    with (RESULTS / "pair_labels.jsonl").open("a") as out:
        for r in rows:
            out.write(json.dumps({**r, "crf": args.crf, "images": args.limit or "all", "maps_miou": json.loads((args.run_dir / "metrics/maps.json").read_text())["miou"],
                                  "commit": commit, **host()}) + "\n")
    print("| fg | bg | labelled % | fg precision | bg precision | pair accuracy |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fg_threshold']} | {r['bg_threshold']} | {r['labelled']} | {r['fg_precision']} | "
              f"{r['bg_precision']} | {r['pair_accuracy']} |")


if __name__ == "__main__":
    main()
