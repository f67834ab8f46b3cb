"""DRS ablation: plain CAM vs fixed vs learnable DRS and placements, same budget, one table.

    python benchmarks/ablate_drs.py --root $WSSS_VOC_MINI [--only NAME ...] [--seed 0] [--set key=value ...]

Each configuration is one params override run through the real stages (manifest,
train_classifier, export_maps) in its own scratch directory; results are appended to
benchmarks/results/drs_ablation.jsonl and the table is rewritten to benchmarks/results/drs_ablation.md.
Ground-truth masks are used only to score the exported maps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common import RESULTS, host, params_for, run_stages

SGD_HIGH = ["classifier.optimizer=sgd", "classifier.lr=0.01"]        # new layers x10: 0.1
SGD_PAPER = ["classifier.optimizer=sgd", "classifier.lr=0.001"]      # the paper's 1e-3, new layers x10
ADAMW = ["classifier.optimizer=adamw", "classifier.lr=0.0001"]       # new layers x10: 1e-3
PLAIN = ["classifier.drs.mode=none", "classifier.extra_convs=0"]

CONFIGS = {
    "plain_cam_sgd1e-2": PLAIN + SGD_HIGH,
    "plain_cam_sgd1e-3": PLAIN + SGD_PAPER,
    "plain_cam_adamw1e-4": PLAIN + ADAMW,
    "plain_cam_extra3_adamw1e-4": ["classifier.drs.mode=none"] + ADAMW,
    "learnable_extra3_sgd1e-2": ["classifier.drs.mode=learnable"] + SGD_HIGH,
    "learnable_extra3_adamw1e-4": ["classifier.drs.mode=learnable"] + ADAMW,
    "fixed_extra3_d0.55_adamw1e-4": ["classifier.drs.mode=fixed", "classifier.drs.delta=0.55"] + ADAMW,
    "fixed_head_d0.55_adamw1e-4": PLAIN[:1] + ["classifier.drs.mode=fixed", "classifier.extra_convs=0",
                                               "classifier.drs.placement=[head]"] + ADAMW,
    "learnable_head_adamw1e-4": ["classifier.drs.mode=learnable", "classifier.extra_convs=0",
                                 "classifier.drs.placement=[head]"] + ADAMW,
    "fixed_blocks4_extra3_d0.55_adamw1e-4": ["classifier.drs.mode=fixed",
                                             "classifier.drs.placement=[extra, 'blocks:4']"] + ADAMW,
}


def run(name: str, overrides: list[str], root: str, seed: int, extra: list[str], scratch: Path) -> dict:
    params = params_for(root, [f"classifier.seed={seed}", *overrides, *extra])
    workdir = scratch / f"{name}_seed{seed}"
    run_stages(["manifest", "train_classifier", "export_maps"], params, workdir)
    return collect(name, seed, overrides + extra, workdir)


def collect(name: str, seed: int, overrides: list[str], workdir: Path) -> dict:
    """One table row from a finished configuration's metrics files (times as the stages measured them)."""
    cls = json.loads((workdir / "metrics/classifier.json").read_text())
    maps = json.loads((workdir / "metrics/maps.json").read_text())
    return {
        "name": name, "seed": seed, "overrides": overrides,
        "maps_miou": maps.get("miou"), "best_threshold": maps.get("threshold"),
        "val_map": cls.get("val_map"), "drs_delta_mean": cls.get("drs_delta_mean"),
        "train_s": cls["train_seconds"], "export_s": maps["seconds"], **host(),
    }


def write_table(rows: list[dict]) -> None:
    lines = ["| configuration | seed | maps mIoU | best t | classifier val mAP | mean delta | train s | export s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['seed']} | {r['maps_miou']} | {r['best_threshold']} | {r['val_map']} | "
                     f"{r['drs_delta_mean'] if r['drs_delta_mean'] is not None else '-'} | {r['train_s']} | {r['export_s']} |")
    (RESULTS / "drs_ablation.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"), help="VOC-layout dataset (default: $WSSS_VOC_MINI)")
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra override applied to every configuration")
    ap.add_argument("--scratch", default="/tmp/wsss-ablation")
    ap.add_argument("--collect", action="store_true",
                    help="record configurations already run in --scratch instead of running them")
    args = ap.parse_args()
    if not args.root:
        sys.exit("no dataset: pass --root or set WSSS_VOC_MINI")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "drs_ablation.jsonl"
    for name in args.only:
        if args.collect:
            row = collect(name, args.seed, CONFIGS[name] + args.set, Path(args.scratch) / f"{name}_seed{args.seed}")
        else:
            row = run(name, CONFIGS[name], args.root, args.seed, args.set, Path(args.scratch))
        print(json.dumps(row), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_table([json.loads(line) for line in log.read_text().splitlines() if line.strip()])


if __name__ == "__main__":
    main()
