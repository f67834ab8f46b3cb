"""Stage 0: scan the dataset at data.root into artifacts/manifest.parquet (id, split, size, tags, mask)."""
from __future__ import annotations

from collections import Counter

from wsss.dataset import voc
from wsss.config import paths
from wsss.stores.atomic import write_parquet
from wsss.tracking.outputs import write_stage_outputs


def main(params: dict) -> dict:
    cfg = params["data"]
    splits = list(dict.fromkeys([cfg["train_split"], cfg["val_split"]]))
    # val images are only scored: one of background alone is allowed there, not in training
    scored_only = [cfg["val_split"]] if cfg["val_split"] != cfg["train_split"] else []
    table, classes = voc.scan(cfg["root"], splits, allow_no_objects=scored_only)
    write_parquet(table, paths.MANIFEST)
    rows = table.to_pylist()
    stats = {
        "root": cfg["root"],
        "n_classes": len(classes),
        "images": dict(Counter(r["split"] for r in rows)),
        "with_mask": sum(r["has_mask"] for r in rows),
    }
    return write_stage_outputs("manifest", stats)
