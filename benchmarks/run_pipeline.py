"""The whole pipeline on a real dataset, timed stage by stage, written as a results table.

    OMP_NUM_THREADS=2 python benchmarks/run_pipeline.py --root $WSSS_VOC_MINI [--set key=value ...]

Runs the stages after `demo` with params.yaml (plus overrides) in a scratch directory and writes
benchmarks/results/pipeline_<name>.json and .md: every stage's mIoU and wall time, the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import RESULTS, host, params_for, pipeline_stages, run_stages, write_lines

STAGES = [s for s in pipeline_stages() if s != "demo"]  # dvc.yaml's list; the dataset is --root
SCORE = {"label_round": "labels_miou", "train_classifier": "val_map", "export_maps": "miou", "export_refined": "miou", "pseudo_labels": "miou",
         "train_segmenter": "val_miou", "train_reference": "val_miou"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    ap.add_argument("--name", default="voc_mini")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--stages", nargs="*", default=STAGES)
    ap.add_argument("--scratch", default="benchmarks/work/pipeline")
    args = ap.parse_args()
    if not args.root:
        sys.exit("no dataset: pass --root or set WSSS_VOC_MINI")
    params = params_for(args.root, args.set)
    start = time.perf_counter()
    out = run_stages(args.stages, params, Path(args.scratch) / args.name)
    total = round(time.perf_counter() - start, 1)
    record = {"name": args.name, "overrides": args.set, "total_seconds": total, **host(), "stages": out}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"pipeline_{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"Pipeline on `{args.root}` ({record['date']}, {record['cpus']} CPUs, threads {record['threads']}); "
             f"overrides: {args.set or 'none'}.", "", "| stage | score | seconds |", "|---|---|---|"]
    for stage, r in out.items():
        key = SCORE.get(stage.partition("@")[0])
        score = r["result"].get(key) if key else None
        extra = f" (CRF: {r['result']['val_miou_crf']})" if "val_miou_crf" in r["result"] else ""
        lines.append(f"| {stage} | {'-' if score is None else f'{key} {score}'}{extra} | {r['seconds']} |")
    lines.append(f"| **total** | | {total} |")
    write_lines(f"pipeline_{args.name}.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
