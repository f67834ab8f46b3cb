"""Time the shipped pseudo labels (label_all, engine local) alone in one process, to find what the
throughput benchmark's pseudo-label row pays for (benchmarks/results/label_chunks.json):

    python benchmarks/label_chunks.py CHUNK          # output shards (= chunks) of CHUNK images
    REPS=4 CLUSTER=0 python benchmarks/label_chunks.py 25
    MALLOC_TRIM_THRESHOLD_=65536 CLUSTER=0 python benchmarks/label_chunks.py 25

It reuses the work folder benchmarks/throughput.py leaves (/tmp/wsss-throughput: manifest, maps).
Each repeat times label_all once, then (CLUSTER=1, the default) once more beside an idle Dask
LocalCluster started in this process (distributed.LocalCluster itself, not scaleout's local_cluster,
so its nannies' environment reaches this process as it did before the fix). Prints the seconds.
"""
import json
import logging
import os
import sys
import time

from common import params_for

WORK = "/tmp/wsss-throughput"


def main() -> None:
    os.environ["WSSS_TRACKING"] = "off"
    chunk = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    params = params_for(os.environ.get("WSSS_VOC_MINI", "/work/shared/data/voc2012-mini"),
                        ["rounds={}", "pseudo_labels.maps=artifacts/maps", "maps.shard_size=25",
                         f"pseudo_labels.shard_size={chunk}", f"scaleout.chunk_size={chunk}"])
    from distributed import LocalCluster

    from config import paths
    from labelling.batch import label_all
    from scaleout.engine import LOOPBACK

    os.chdir(WORK)

    def timed() -> float:
        start = time.perf_counter()
        label_all(params, paths.MAPS, paths.PSEUDO_LABELS, "pseudo_labels")
        return round(time.perf_counter() - start, 2)

    seconds = {"alone": [], "idle_cluster": []}
    for _ in range(int(os.environ.get("REPS", "2"))):
        seconds["alone"].append(timed())
        if os.environ.get("CLUSTER", "1") == "1":
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host=LOOPBACK,
                                   dashboard_address=f"{LOOPBACK}:0", silence_logs=logging.ERROR)
            seconds["idle_cluster"].append(timed())
            cluster.close()
        print(seconds, flush=True)
    print("chunk", chunk, json.dumps(seconds))


if __name__ == "__main__":   # the labelling pool spawns processes that import this module
    main()
