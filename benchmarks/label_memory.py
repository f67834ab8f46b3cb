"""What a training stage holds of the pseudo labels (or maps): raw arrays vs the stores' packed mappings.

    python benchmarks/label_memory.py RUN_DIR/artifacts/pseudo_labels [--maps RUN_DIR/artifacts/maps]

Reads a label store (and a map store), reports the raw bytes of every array, the compressed bytes held, the
ratio, the milliseconds to decode each array once, and what raw and held would take for
full VOC 2012 + SBD (10,582 train_aug images) at this store's mean pixels per image. Writes
benchmarks/results/label_memory.json.
"""
from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, host
from stores import labelstore, mapstore


def measure(held, array) -> dict:
    start = time.perf_counter()
    raw = sum(array(held[image_id]).nbytes for image_id in held)
    n = len(held)
    return {"n_images": n, "raw_bytes": raw, "held_bytes": held.nbytes, "ratio": round(raw / held.nbytes, 1),
            "decode_ms_per_image": round(1000 * (time.perf_counter() - start) / n, 3),
            "train_aug_raw_gb_at_this_mean_size": round(10_582 * raw / n / 1e9, 2),
            "train_aug_held_mb_at_this_ratio": round(10_582 * held.nbytes / n / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--maps", help="a map store too (what train_refiner holds)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    record = {**host(), "note": args.note, "labels": {"store": args.store,
                                                      **measure(labelstore.read_dict(args.store), lambda v: v)}}
    if args.maps:
        record["maps"] = {"store": args.maps, **measure(mapstore.read_dict(args.maps), lambda v: v[1])}
    (RESULTS / "label_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
