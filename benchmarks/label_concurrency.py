"""Does per-image labelling (CRF + superpixel voting) scale across processes on this machine?

    OMP_NUM_THREADS=1 python benchmarks/label_concurrency.py --work /tmp/wsss-throughput [--images 24]

Reads the maps benchmarks/throughput.py left in --work (artifacts/maps), labels the first N images
in one process (seconds per image), then in two processes at once (each its own N images), and
writes benchmarks/results/label_concurrency.json. Per-image time barely rising with two processes
means the labelling work itself scales, so a shipped pseudo_labels run that falls short of 2x the
naive loop loses its time elsewhere (pool start, chunk drains, the driver process).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, host, params_for


def one(work: str, n: int) -> float:
    from labelling.pseudo import label_image
    from stores import mapstore
    params = params_for(os.environ.get("WSSS_VOC_MINI", ""), [])
    root = params["data"]["root"]
    rows = list(mapstore.read(Path(work) / "artifacts" / "maps", as_uint8=True))[:n]
    start = time.perf_counter()
    for image_id, classes, maps in rows:
        label_image((root, image_id, classes, maps, params["pseudo_labels"], True, 21))
    return (time.perf_counter() - start) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/wsss-throughput")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.work, args.images)))
        return
    cmd = [sys.executable, __file__, "--child", "--work", args.work, "--images", str(args.images)]
    run = lambda k: [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    alone = [float(p.communicate()[0]) for p in run(1)]
    together = [float(p.communicate()[0]) for p in run(2)]
    record = {"images": args.images, "alone_s_per_image": round(alone[0], 3),
              "two_processes_s_per_image": [round(t, 3) for t in together],
              "slowdown_two_vs_alone": round(max(together) / alone[0], 3), **host()}
    print(json.dumps(record))
    (RESULTS / "label_concurrency.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
