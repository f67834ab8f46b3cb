"""The segmenter-side methods (OCR head, locally adaptive loss) on a finished pipeline's
labels: one segmenter training per call, one row appended to benchmarks/results/seed_methods.jsonl.

    OMP_NUM_THREADS=2 python benchmarks/segmenter_methods.py [--run benchmarks/work/pipeline/voc_mini]
        [--labels pseudo|gt] [--set segmenter.head=ocr] [--set segmenter.loss=locally_adaptive]
        [--set segmenter.seed=1] [--method NAME] [--no-train-score] [--note TEXT]

The run's artifacts/manifest.parquet and artifacts/pseudo_labels (and refiner.pt, for
segmenter.init=refiner) are copied into a scratch directory of this script's own (--scratch,
default benchmarks/work/segmenter_methods/<method>_<labels>_s<seed>); nothing is written into the run. There
the stage train_segmenter (--labels pseudo: the run's pseudo labels) or train_reference (--labels
gt: the ground-truth masks, the reference) trains with params.yaml plus the --set overrides and
scores val (val_miou, and val_miou_crf).

Choices are made on train-split scores, so the trained network also predicts the
train split (val's inference: segmenter.val_scales and val_flip, no CRF) and `train_miou` is its mIoU
against the train split's ground-truth masks; the masks are only scored, never trained on with
--labels pseudo. The row: method (ocr, adaptive_loss, ocr+adaptive_loss or baseline, from the
settings unless --method), config (the overrides), seed, labels, val_miou, val_miou_crf,
train_miou, train_seconds, eval_seconds, train_score_seconds, wall_s, date, host.

--score-run trains nothing: the run's own segmenter (artifacts/segmenter.pt, trained with the
run's settings) gets its train_miou, and its val figures come from the run's metrics/segmentation.json
(method `baseline` unless --method; config and seed as the --set say, which must match the run).

--limit N keeps the first N train and N val images (a quick check of the script, not a result:
give --results elsewhere then).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from common import RESULTS, copy_run, host, params_for, run_stages, train_score

OCR_HEADS = ("ocr", "ocr_plus")


def method_name(params: dict) -> str:
    seg = params["segmenter"]
    parts = (["ocr"] if seg["head"] in OCR_HEADS else []) + (["adaptive_loss"] if seg["loss"] == "locally_adaptive" else [])
    return "+".join(parts) or "baseline"


def prepare(run: Path, scratch: Path, labels: str, limit: int, init: str) -> Path:
    """A fresh scratch workspace with the run's manifest (the first `limit` rows of each split when
    limit > 0), its pseudo labels, and its refiner when the segmenter starts from it. Returns the
    dataset root the manifest names."""
    if scratch.exists():
        shutil.rmtree(scratch)
    table = copy_run(run, scratch, limit, labels=labels == "pseudo")
    if labels == "pseudo" and init == "refiner":
        shutil.copy2(run / "artifacts" / "refiner.pt", scratch / "artifacts" / "refiner.pt")
    meta = table.schema.metadata or {}
    return Path(meta[b"root"].decode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("benchmarks/work/pipeline/voc_mini"))
    ap.add_argument("--labels", choices=("pseudo", "gt"), default="pseudo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--method", default="", help="row's method (default: from segmenter.head / segmenter.loss)")
    ap.add_argument("--scratch", type=Path, default=Path("benchmarks/work/segmenter_methods"))
    ap.add_argument("--limit", type=int, default=0, help="first N images of each split (a check, not a result)")
    ap.add_argument("--no-train-score", action="store_true")
    ap.add_argument("--score-run", action="store_true", help="no training: score the run's own segmenter on train")
    ap.add_argument("--results", type=Path, default=RESULTS / "seed_methods.jsonl")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    start = time.perf_counter()
    sets = list(args.set)
    if args.labels == "gt":
        sets = ["reference.enabled=true", "reference.crf=true", *sets]   # val_miou_crf as for the weak model
    params = params_for("data/demo", sets)   # data.root: read by the manifest stage only, not run here
    method = args.method or method_name(params)
    seed = params["segmenter"]["seed"]
    workdir = args.scratch / f"{method.replace('+', '_')}_{args.labels}_s{seed}"
    root = prepare(args.run.resolve(), workdir, args.labels, args.limit, params["segmenter"]["init"])
    params = params_for(str(root), sets)

    stage, name = ("train_segmenter", "segmenter") if args.labels == "pseudo" else ("train_reference", "reference")
    if args.score_run:   # the run's segmenter as it is: its val figures from the run's metrics
        if args.labels != "pseudo":
            raise SystemExit("--score-run scores the run's weakly supervised segmenter: use --labels pseudo")
        result = json.loads((args.run / "metrics" / "segmentation.json").read_text())
        shutil.copy2(args.run / "artifacts" / "segmenter.pt", workdir / "artifacts" / "segmenter.pt")
    else:
        result = run_stages([stage], params, workdir)[stage]["result"]
    train_miou, score_seconds = (None, None)
    if not args.no_train_score:
        train_miou, score_seconds = train_score(workdir / "artifacts" / f"{name}.pt",
                                                workdir / "artifacts" / "manifest.parquet", params)
    labels_metrics = args.run / "metrics" / "pseudo_labels.json"
    row = {"method": method, "config": {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)},
           "seed": seed, "labels": args.labels,
           "val_miou": result.get("val_miou"), "val_miou_crf": result.get("val_miou_crf"),
           "train_miou": train_miou,   # the train split's ground-truth masks, scoring only
           "train_miou_scored_on": "train split ground-truth masks (val inference settings, no CRF)",
           "labels_miou": json.loads(labels_metrics.read_text()).get("miou") if args.labels == "pseudo"
           and labels_metrics.is_file() else None,
           "head": params["segmenter"]["head"], "loss": params["segmenter"]["loss"],
           "epochs": params["segmenter"]["epochs"], "n_train": result.get("n_train"),
           "train_seconds": result.get("train_seconds"), "eval_seconds": result.get("eval_seconds"),
           "train_score_seconds": score_seconds, "wall_s": round(time.perf_counter() - start, 1),
           "source_run": str(args.run), "trained_here": not args.score_run, "workdir": str(workdir), "limit": args.limit, "note": args.note, **host()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
