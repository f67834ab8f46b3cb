"""Val mIoU of trained segmenters under other inference scales, without retraining.

    OMP_NUM_THREADS=2 python benchmarks/val_scales.py RUN_DIR [--no-baseline] [--scales 0.5 0.75 1.0 ...]

RUN_DIR is a finished pipeline directory (benchmarks/run_pipeline.py): its weak segmenter
(artifacts/segmenter.pt) and its ground-truth reference (artifacts/reference.pt) are scored on the
val split with each scale set given (single scale [1.0] is the baseline, run first unless --no-baseline), with
and without CRF, as segmentation.evaluate scores them in the pipeline. Appends to
benchmarks/results/val_scales.jsonl and rewrites val_scales.md from every row scored so far.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, host

from dataset import voc
from training import checkpoints, segmentation
from scoring.metrics import mean_iou
from training.runtime import resolve_device


def score(checkpoint: Path, run_dir: Path, scales: list[float], split: str) -> dict:
    device = resolve_device("auto")
    model, config = checkpoints.load(checkpoint, device)
    cfg, classes = config["network"], config["classes"]
    manifest, _, root = voc.read_manifest(run_dir / "artifacts/manifest.parquet")
    rows = voc.split_rows(manifest, split)
    start = time.perf_counter()
    plain, crf, _ = segmentation.evaluate(model, root, rows, len(classes), {**cfg, "val_scales": scales}, device)
    return {"miou": round(100 * mean_iou(plain), 2), "miou_crf": round(100 * mean_iou(crf), 2),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--split", default="val")
    ap.add_argument("--scales", nargs="+", type=float, action="append", default=None,
                    help="one scale set per use of the option (default: 0.5 0.75 1.0)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the single-scale [1.0] row")
    args = ap.parse_args()
    sets = ([] if args.no_baseline else [[1.0]]) + (args.scales or [[0.5, 0.75, 1.0]])
    rows = []
    for scales in sets:
        row = {"run": str(args.run_dir), "scales": scales, **host()}
        for name in ("segmenter", "reference"):
            ckpt = args.run_dir / "artifacts" / f"{name}.pt"
            if ckpt.is_file():
                row[name] = score(ckpt, args.run_dir, scales, args.split)
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "val_scales.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(write_table())


def write_table() -> str:
    """Rewrite val_scales.md from every row of val_scales.jsonl, oldest first; returns the table."""
    lines = ["| run | date | scales | weak val mIoU | + CRF | reference val mIoU | + CRF | ratio | ratio, CRF "
             "| eval s (weak) |", "|---|---|---|---|---|---|---|---|---|---|"]
    history = [json.loads(line) for line in (RESULTS / "val_scales.jsonl").read_text().splitlines() if line.strip()]
    for r in history:
        w, g = r.get("segmenter", {}), r.get("reference", {})
        ratio = round(w["miou"] / g["miou"], 3) if w and g else "-"
        ratio_crf = round(w["miou_crf"] / g["miou_crf"], 3) if w and g else "-"
        lines.append(f"| `{r['run']}` | {r['date']} | {r['scales']} | {w.get('miou', '-')} | {w.get('miou_crf', '-')} "
                     f"| {g.get('miou', '-')} | {g.get('miou_crf', '-')} | {ratio} | {ratio_crf} "
                     f"| {w.get('seconds', '-')} |")
    table = "\n".join(lines)
    (RESULTS / "val_scales.md").write_text(
        "Trained segmenters re-scored on val at other inference scales (benchmarks/val_scales.py; 2 CPUs).\n\n"
        + table + "\n")
    return table


if __name__ == "__main__":
    main()
