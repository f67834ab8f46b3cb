"""Choose a label round's mining weight on train scores: one prediction pass of a round's
segmenter over the training images, then for each weight the mined maps (argmax mIoU) and the CRF
labels made from them (mIoU, ignored fraction), scored against the train masks only.

    OMP_NUM_THREADS=2 python benchmarks/round_mining.py RUN_DIR [--round r1] [--weights 0 0.25 0.5 0.75]

RUN_DIR: a pipeline workspace that ran label_round@<round> (benchmarks/run_pipeline.py's scratch
folder). Rows are appended to benchmarks/results/round_mining.jsonl.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from common import RESULTS, host, params_for
from config import paths
from dataset import voc
from labelling.pseudo import label_image
from scoring.metrics import IGNORE, summary
from training import checkpoints
from training.relabel import mine, predict_train
from training.runtime import resolve_device, resolve_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    ap.add_argument("--round", default="r1")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    os.chdir(args.run_dir)
    params = params_for(args.root, [f"rounds={{{args.round}: {{maps: artifacts/refined_maps}}}}",
                                    f"pseudo_labels.maps=artifacts/rounds/{args.round}/maps", *args.set])
    spec, cfg = params["rounds"][args.round], params["pseudo_labels"]
    device = resolve_device(params["segmenter"]["device"])
    model, _ = checkpoints.load(paths.round_dir(args.round) / "segmenter.pt", device)
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    rows, n = voc.split_rows(manifest, params["data"]["train_split"]), len(classes)
    start = time.perf_counter()
    kept, protos = predict_train(model, root, rows, n, spec, device,
                                 resolve_precision(device, params["segmenter"]["precision"]))
    predict_s = round(time.perf_counter() - start, 1)
    with mp.get_context("spawn").Pool(os.cpu_count()) as pool, (RESULTS / "round_mining.jsonl").open("a") as out:
        for weight in args.weights:
            start, scores = time.perf_counter(), {}
            jobs = [(str(root), i, c, np.round(m * 255).astype(np.uint8), cfg, r[0]["has_mask"], n)
                    for (i, c, m), r in zip(mine(kept, protos, root, n, {**spec["mining"], "weight": weight},
                                                 cfg["saliency_dir"], scores), kept)]
            conf, ignored, total = np.zeros((n, n), np.int64), 0, 0
            for _, labels, c, _ in pool.imap(label_image, jobs, chunksize=2):
                ignored, total = ignored + int((labels == IGNORE).sum()), total + labels.size
                conf += c if c is not None else 0
            row = {"round": args.round, "weight": weight, "scales": spec["scales"], "flip": spec["flip"],
                   "confidence": spec["mining"]["confidence"], "temperature": spec["mining"]["temperature"],
                   "segmenter_maps_miou": summary(scores["segmenter"], classes)["miou"],
                   "mined_maps_miou": summary(scores["mined"], classes)["miou"],
                   "labels_miou": summary(conf, classes)["miou"], "ignored_fraction": round(ignored / total, 4),
                   "predict_seconds": predict_s, "seconds": round(time.perf_counter() - start, 1), **host()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row))


if __name__ == "__main__":
    main()
