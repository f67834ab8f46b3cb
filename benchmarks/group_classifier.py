"""Group-wise semantic mining (classifier.group) against the default classifier, per seed: the
classifier's val mAP, its maps' train mIoU (the masks score only) exported alone (maps.group_export
single) and with neighbours, and the time of each.

    OMP_NUM_THREADS=2 python benchmarks/group_classifier.py --root $WSSS_VOC_MINI [--seeds 0 1]
        [--scratch /tmp/wsss-group] [--arms default group] [--set key=value ...] [--note TEXT] [--dry-run]
        [--labels]

Each arm and seed runs manifest, train_classifier and export_maps in its own folder under
--scratch (the group arm exports a second time with maps.group_export=neighbours). One row per
arm, seed and export is appended to benchmarks/results/seed_methods.jsonl with method `group_gnn`
(config.group false: the default classifier). --dry-run prints the rows instead (the tiny check).

--labels also labels each export's maps (pseudo_labels on the CAMs, LABELS: no refiner, no label
round, the same recipe for every arm) and adds its train mIoU as `labels_miou`: the classifier's
labels without the refiner and round stages, which take about 40 min per arm on 2 cores.
"""
from __future__ import annotations

import time
from pathlib import Path

from common import append_row, arms_args, host, params_for, run_stages

ARMS = {"default": [], "group": ["classifier.group.enabled=true"]}
LABELS = ["rounds={}", "pseudo_labels.maps=artifacts/maps"]   # labels straight from the exported CAMs


def score(out: dict) -> dict:
    maps = out["export_maps"]["result"]
    return {"maps_miou": maps.get("miou"), "maps_threshold": maps.get("threshold"),
            "export_seconds": out["export_maps"]["seconds"], "neighbour_seconds": maps.get("neighbour_seconds")}


def label_score(root: str, overrides: list[str], work: Path) -> dict:
    """The train mIoU of pseudo labels made from the maps now in work/artifacts/maps (LABELS)."""
    out = run_stages(["pseudo_labels"], params_for(root, [*overrides, *LABELS]), work)["pseudo_labels"]
    return {"labels_miou": out["result"].get("miou"), "labels_seconds": out["seconds"],
            "labels_from": "the exported maps: " + ", ".join(LABELS)}


def main() -> None:
    args = arms_args(__doc__, ARMS, "/tmp/wsss-group", [0, 1], flags={"--labels": "label each export's maps"})
    for seed in args.seeds:
        for arm in args.arms:
            work = Path(args.scratch) / f"{arm}_s{seed}"
            overrides = [*args.set, f"classifier.seed={seed}", *ARMS[arm]]
            params = params_for(args.root, [*overrides, "maps.group_export=single"])
            group = params["classifier"]["group"]
            config = {"group": group["enabled"]}
            if group["enabled"]:
                config.update({k: group[k] for k in ("size", "steps", "dropout", "channels", "single_weight")})
            start = time.perf_counter()
            out = run_stages(["manifest", "train_classifier", "export_maps"], params, work)
            clf = out["train_classifier"]["result"]
            common = {"method": "group_gnn", "seed": int(seed), "val_map": clf.get("val_map"),
                      "classifier_seconds": clf.get("train_seconds"), "final_loss": clf.get("final_loss")}
            rows = [{**common, "config": {**config, **({"export": "single"} if group["enabled"] else {})},
                     **score(out), "wall_s": round(time.perf_counter() - start, 1)}]
            if args.labels:   # before the neighbours export replaces the maps
                rows[0].update(label_score(args.root, [*overrides, "maps.group_export=single"], work))
            if group["enabled"]:   # the same classifier, its maps with each image's neighbours
                start = time.perf_counter()
                again = run_stages(["export_maps"], params_for(args.root, [*overrides, "maps.group_export=neighbours"]),
                                   work)
                rows.append({**common, "config": {**config, "export": "neighbours"}, **score(again),
                             "wall_s": round(time.perf_counter() - start, 1)})
                if args.labels:
                    rows[1].update(label_score(args.root, [*overrides, "maps.group_export=neighbours"], work))
            for row in rows:
                row.update({"overrides": args.set, "data": str(args.root), "split": "maps: train, mAP: val",
                            "note": args.note, **host()})
                append_row(row, args.dry_run)


if __name__ == "__main__":
    main()
