"""Label every training image's maps on all cores, store the labels packed, score them: the body
of the pseudo_labels stage and of each label round (tasks/pseudo_labels.py, tasks/label_round.py)."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from config import paths
from dataset import voc
from labelling.pseudo import label_image
from scoring.metrics import IGNORE, per_class_csv, summary
from stores import labelstore, mapstore
from stores.atomic import atomic_path
from tracking import panels
from tracking.outputs import write_stage_outputs


def label_all(params: dict, maps_dir: str | Path, out_dir: Path, name: str, extra: dict | None = None) -> dict:
    """Labels of the maps in maps_dir -> out_dir (labelstore); metrics/<name>.json,
    plots/<name>_per_class.csv and reports/<name>/ (sample panels). extra: more metrics."""
    cfg = params["pseudo_labels"]
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    rows = {r["id"]: r for r in voc.split_rows(manifest, params["data"]["train_split"])}
    n = len(classes)
    conf, ignored, total = np.zeros((n, n), np.int64), 0, 0
    sp_seconds = []   # per image, in its worker, with pseudo_labels.superpixels.enabled
    jobs = ((str(root), i, c, m, cfg, rows[i]["has_mask"], n)
            for i, c, m in mapstore.read(maps_dir, as_uint8=True))
    workers = cfg["workers"] or os.cpu_count() or 1
    start = time.perf_counter()

    def results():
        nonlocal conf, ignored, total
        # spawn, not fork: a parent that already ran torch (OpenMP) can deadlock forked children.
        with mp.get_context("spawn").Pool(workers) as pool:
            for image_id, labels, c, sp_s in tqdm(pool.imap(label_image, jobs, chunksize=2), total=len(rows),
                                                  desc=f"{name} (CRF)", unit="img", dynamic_ncols=True):
                ignored += int((labels == IGNORE).sum())
                total += labels.size
                if c is not None:
                    conf += c
                if sp_s is not None:
                    sp_seconds.append(sp_s)
                yield image_id, labels

    with atomic_path(paths.REPORTS / name) as samples_dir:
        samples_dir.mkdir()

        def with_samples():
            for k, (image_id, labels) in enumerate(results()):
                if k < cfg["n_samples"]:
                    image = voc.load_image(root, image_id)
                    mask = voc.load_mask(root, image_id, n)
                    panels.labels_panel(image, [("pseudo label", labels)], mask, classes).save(
                        samples_dir / f"{image_id}.png")
                yield image_id, labels

        count = labelstore.write(with_samples(), out_dir, cfg["shard_size"])
    metrics = {"maps": str(maps_dir), **(extra or {}), "n_images": count,
               "ignored_fraction": round(ignored / max(total, 1), 4),
               "seconds": round(time.perf_counter() - start, 1), "workers": workers}
    if sp_seconds:
        metrics["superpixel_seconds_per_image"] = round(float(np.mean(sp_seconds)), 3)
    if conf.sum():
        metrics = {**summary(conf, classes), **metrics}
    return write_stage_outputs(name, metrics, plots={f"{name}_per_class.csv": per_class_csv(metrics.get("per_class_iou", {}))},
                               reports={name: name.replace("/", "_") + "_samples"})
