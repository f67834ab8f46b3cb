"""Stage 0: scan the dataset at data.root into artifacts/manifest.parquet (id, split, size, tags, mask)."""
from __future__ import annotations

from collections import Counter

from tasks import data, paths
from tasks.io import write_json, write_parquet


def main(params: dict) -> dict:
    cfg = params["data"]
    splits = list(dict.fromkeys([cfg["train_split"], cfg["val_split"]]))
    table, classes = data.scan(cfg["root"], splits)
    write_parquet(table, paths.MANIFEST)
    rows = table.to_pylist()
    stats = {
        "root": cfg["root"],
        "n_classes": len(classes),
        "images": dict(Counter(r["split"] for r in rows)),
        "with_mask": sum(r["has_mask"] for r in rows),
    }
    write_json(stats, paths.METRICS / "manifest.json")
    return stats
