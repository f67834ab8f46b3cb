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

CONFIGS = {
    "plain_cam": ["classifier.drs.mode=none", "classifier.extra_convs=0"],
    "plain_cam_extra3": ["classifier.drs.mode=none"],
    "fixed_extra3_d0.55": ["classifier.drs.mode=fixed", "classifier.drs.delta=0.55"],
    "learnable_extra3": ["classifier.drs.mode=learnable"],
    "fixed_head_d0.55": ["classifier.drs.mode=fixed", "classifier.extra_convs=0", "classifier.drs.placement=[head]"],
    "learnable_head": ["classifier.drs.mode=learnable", "classifier.extra_convs=0", "classifier.drs.placement=[head]"],
    "fixed_blocks4_extra3_d0.55": ["classifier.drs.mode=fixed", "classifier.drs.placement=[extra, 'blocks:4']"],
    "fixed_extra3_d0.40": ["classifier.drs.mode=fixed", "classifier.drs.delta=0.40"],
}


def run(name: str, overrides: list[str], root: str, seed: int, extra: list[str], scratch: Path) -> dict:
    params = params_for(root, [f"classifier.seed={seed}", *overrides, *extra])
    out = run_stages(["manifest", "train_classifier", "export_maps"], params, scratch / f"{name}_seed{seed}")
    cls, maps = out["train_classifier"]["result"], out["export_maps"]["result"]
    return {
        "name": name, "seed": seed, "overrides": overrides + extra,
        "maps_miou": maps.get("miou"), "best_threshold": maps.get("threshold"),
        "val_map": cls.get("val_map"), "drs_delta_mean": cls.get("drs_delta_mean"),
        "train_s": out["train_classifier"]["seconds"], "export_s": out["export_maps"]["seconds"], **host(),
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
    args = ap.parse_args()
    if not args.root:
        sys.exit("no dataset: pass --root or set WSSS_VOC_MINI")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "drs_ablation.jsonl"
    for name in args.only:
        row = run(name, CONFIGS[name], args.root, args.seed, args.set, Path(args.scratch))
        print(json.dumps(row), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_table([json.loads(line) for line in log.read_text().splitlines() if line.strip()])


if __name__ == "__main__":
    main()
