"""What a training stage holds of the pseudo labels: raw arrays vs stores.labelstore.PackedLabels.

    python benchmarks/label_memory.py RUN_DIR/artifacts/pseudo_labels

Reads a label store, reports the raw bytes of every label map, the compressed bytes held, the
ratio, the seconds to read the store and to decode every map once, and what raw would take for
full VOC 2012 + SBD (10,582 train_aug images) at this store's mean pixels per image. Writes
benchmarks/results/label_memory.json.
"""
from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, host
from stores import labelstore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    start = time.perf_counter()
    held = labelstore.read_dict(args.store)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    raw = sum(held[image_id].nbytes for image_id in held)
    decode_s = time.perf_counter() - start
    n = len(held)
    record = {**host(), "store": args.store, "note": args.note, "n_images": n, "raw_bytes": raw,
              "held_bytes": held.nbytes, "ratio": round(raw / held.nbytes, 1), "read_seconds": round(read_s, 2),
              "decode_ms_per_image": round(1000 * decode_s / n, 3),
              "train_aug_raw_gb_at_this_mean_size": round(10_582 * raw / n / 1e9, 2),
              "train_aug_held_mb_at_this_ratio": round(10_582 * held.nbytes / n / 1e6, 1)}
    (RESULTS / "label_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
