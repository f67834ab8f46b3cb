"""Self-supervised pretraining (the pretrain stage, SimCLR) for the classifier: four starts, per seed,
each scored by the classifier's val mAP and its maps' train mIoU (the masks score only).

    OMP_NUM_THREADS=2 python benchmarks/ssl_pretrain.py --root $WSSS_VOC_MINI [--seeds 0]
        [--arms scratch scratch_ssl imagenet imagenet_ssl] [--scratch /tmp/wsss-ssl]
        [--set key=value ...] [--note TEXT] [--dry-run]

Arms (ARMS below): scratch (random backbone; every layer and batch norm trained, as nothing is
pretrained to keep), scratch_ssl (SimCLR from random weights on the dataset's train + val images,
lr 1e-3, then the classifier from it), imagenet (the default), imagenet_ssl (SimCLR continued from
ImageNet at pretrain.lr, then the classifier from it). Each runs manifest, pretrain (a note when
disabled), train_classifier and export_maps in its own folder under --scratch; one row per arm and
seed, method `ssl_pretrain`, is appended to benchmarks/results/seed_methods.jsonl (--dry-run: printed only).
"""
from __future__ import annotations

import time
from pathlib import Path

from common import append_row, arms_args, host, params_for, run_stages

SSL = ["pretrain.enabled=true", "classifier.init=pretrain"]
ARMS = {
    "scratch": ["classifier.pretrained=false", "classifier.freeze_blocks=0", "classifier.freeze_bn=false"],
    "scratch_ssl": [*SSL, "pretrain.start=scratch", "pretrain.lr=0.001"],
    "imagenet": [],
    "imagenet_ssl": [*SSL, "pretrain.start=imagenet"],
}
PRETRAIN_KEYS = ("start", "epochs", "batch_size", "image_size", "lr", "temperature")
FIGURES = ("embedding_std", "embedding_spread", "collapsed", "first_loss", "final_loss", "held_loss",
           "chance_loss", "train_seconds", "n_train")


def main() -> None:
    args = arms_args(__doc__, ARMS, "/tmp/wsss-ssl", [0])
    for seed in args.seeds:
        for arm in args.arms:
            params = params_for(args.root, [*ARMS[arm], *args.set, f"classifier.seed={seed}", f"pretrain.seed={seed}"])
            start = time.perf_counter()
            out = run_stages(["manifest", "pretrain", "train_classifier", "export_maps"], params,
                             Path(args.scratch) / f"{arm}_s{seed}")
            pre, clf, maps = (out[s]["result"] for s in ("pretrain", "train_classifier", "export_maps"))
            cfg = params["pretrain"]
            row = {"method": "ssl_pretrain", "seed": int(seed),
                   "config": {"arm": arm, "classifier.pretrained": params["classifier"]["pretrained"],
                              "classifier.init": params["classifier"]["init"],
                              "pretrain": {"method": "simclr", **{k: cfg[k] for k in PRETRAIN_KEYS}} if cfg["enabled"] else None},
                   "val_map": clf.get("val_map"), "maps_miou": maps.get("miou"), "maps_threshold": maps.get("threshold"),
                   "classifier_seconds": clf.get("train_seconds"), "export_seconds": out["export_maps"]["seconds"],
                   "pretrain": {k: pre.get(k) for k in FIGURES} if cfg["enabled"] else None,
                   "wall_s": round(time.perf_counter() - start, 1), "overrides": args.set, "data": str(args.root),
                   "split": "maps: train, mAP: val (pretraining saw train + val images, no labels)",
                   "note": args.note, **host()}
            append_row(row, args.dry_run)


if __name__ == "__main__":
    main()
