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

from common import RESULTS, host, params_for, run_stages, write_lines

# Every row inherits the classifier recipe of params.yaml (AdamW 1e-4, new layers x10, 15 epochs,
# stem + 2 blocks frozen) and changes only what its name says. Rows measured under older recipes
# (SGD) keep their own names in the results file.
PLAIN = ["classifier.drs.mode=none", "classifier.extra_convs=0"]
EXTRA3 = ["classifier.extra_convs=3", "classifier.drs.placement=[extra]"]
HEAD = ["classifier.extra_convs=0", "classifier.drs.placement=[head]"]

CONFIGS = {
    "plain_cam": PLAIN,
    "plain_extra3": EXTRA3 + ["classifier.drs.mode=none"],
    "learnable_extra3": EXTRA3 + ["classifier.drs.mode=learnable"],
    "fixed_extra3_d0.55": EXTRA3 + ["classifier.drs.mode=fixed", "classifier.drs.delta=0.55"],
    "fixed_extra3_d0.70": EXTRA3 + ["classifier.drs.mode=fixed", "classifier.drs.delta=0.7"],
    "learnable_head": HEAD + ["classifier.drs.mode=learnable"],
    "fixed_head_d0.55": HEAD + ["classifier.drs.mode=fixed", "classifier.drs.delta=0.55"],
    "learnable_extra3_head": ["classifier.extra_convs=3", "classifier.drs.placement=[extra, head]",
                              "classifier.drs.mode=learnable"],
    # 1x1 extra convs: DRS's spreading without new 3x3 layers trained from scratch, which cost the
    # extra3 rows class assignment (docs/results.md)
    "plain_extra3_k1": EXTRA3 + ["classifier.extra_kernel=1", "classifier.drs.mode=none"],
    "learnable_extra3_k1": EXTRA3 + ["classifier.extra_kernel=1", "classifier.drs.mode=learnable"],
    "fixed_blocks4_extra3_d0.55": ["classifier.extra_convs=3", "classifier.drs.placement=[extra, 'blocks:4']",
                                   "classifier.drs.mode=fixed", "classifier.drs.delta=0.55"],
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
    write_lines("drs_ablation.md", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"), help="VOC-layout dataset (default: $WSSS_VOC_MINI)")
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra override applied to every configuration")
    ap.add_argument("--scratch", default="benchmarks/work/ablation")
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
