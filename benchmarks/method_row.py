"""One row of benchmarks/results/seed_methods.jsonl from a pipeline workspace's metrics: the
method, its settings, and every stage's score the label-side ablation compares.

    python benchmarks/method_row.py RUN_DIR --method rounds --config '{"rounds": 2}' [--seed 0]
        [--wall-s SECONDS] [--note TEXT]

Missing stages give null (e.g. a run that stopped before the segmenter).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, host


def read(run: Path, name: str) -> dict:
    path = run / "metrics" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def row(run: Path, method: str, config: dict, seed: int) -> dict:
    maps, refined, labels, seg = (read(run, n) for n in ("maps", "refined_maps", "pseudo_labels", "segmentation"))
    rounds = sorted(p.name for p in (run / "metrics" / "rounds").iterdir()) if (run / "metrics" / "rounds").is_dir() else []
    return {"method": method, "config": config, "seed": seed,
            "maps_miou": maps.get("miou"), "refined_miou": refined.get("miou"),
            # the maps the labels come from (refined, else raw): foreground share at their best threshold
            "fg_share_pred": (refined or maps).get("fg_share_pred"), "fg_share_true": (refined or maps).get("fg_share_true"),
            "labels_miou": labels.get("miou"), "ignored_fraction": labels.get("ignored_fraction"),
            "val_miou": seg.get("val_miou"), "val_miou_crf": seg.get("val_miou_crf"),
            "rounds": {k: {"labels_miou": read(run, f"rounds/{k}/pseudo_labels").get("miou"),
                           "val_miou_1scale": read(run, f"rounds/{k}/segmentation").get("val_miou"),
                           "segmenter_maps_miou": read(run, f"rounds/{k}/maps").get("segmenter_miou"),
                           "mined_maps_miou": read(run, f"rounds/{k}/maps").get("mined_miou")} for k in rounds},
            "stage_seconds": {"labels": labels.get("seconds"), "segmenter_train": seg.get("train_seconds"),
                              "segmenter_eval": seg.get("eval_seconds")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--method", required=True)
    ap.add_argument("--config", default="{}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wall-s", type=float)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    out = {**row(args.run_dir, args.method, json.loads(args.config), args.seed), "wall_s": args.wall_s,
           "note": args.note, **host()}
    with (RESULTS / "seed_methods.jsonl").open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
