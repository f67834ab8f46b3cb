"""Label every training image's maps, store the labels packed, score them: the body of the
pseudo_labels stage and of each label round (tasks/pseudo_labels.py, tasks/label_round.py).

One chunk per output shard (`label_chunk`): it reads its images' maps from the input shards,
labels them (per image: wsss/labelling/pseudo.py, on the engine's `imap`: all cores here, or one Dask
worker each), writes its shard and its sample panels, and returns its confusion matrix and counts,
which `label_all` sums. Engine local (shipped) or dask: params.yaml `scaleout`, wsss/scaleout/engine.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.config import paths
from wsss.dataset import voc
from wsss.labelling.pseudo import label_image
from wsss.scaleout.engine import open_engine, progress
from wsss.scoring.metrics import IGNORE, per_class_csv, summary
from wsss.stores import labelstore, mapstore, shards
from wsss.stores.atomic import atomic_file, atomic_path, remove_partials
from wsss.tracking import panels
from wsss.tracking.outputs import write_stage_outputs


@dataclass
class LabelChunk:
    """Output shard `index`: the labels of `ids` (the maps' stored order), images `first`.. overall."""
    index: int
    first: int
    ids: list[str]
    sources: list[str]            # the maps' shard files holding them
    has_mask: dict[str, bool]
    root: str
    cfg: dict                     # pseudo_labels
    classes: list[str]
    out_dir: str                  # the labels' temporary folder
    samples_dir: str              # panels of the first cfg["n_samples"] images


def label_chunk(task: LabelChunk, imap) -> dict:
    """Label, store and score one chunk; returns its partial statistics (summed by label_all)."""
    n, cfg = len(task.classes), task.cfg
    conf, ignored, total, sp_seconds = np.zeros((n, n), np.int64), 0, 0, []
    jobs = ((task.root, i, c, m, cfg, task.has_mask[i], n)
            for i, c, m in mapstore.read_ids(task.sources, task.ids, as_uint8=True))

    def labelled():   # streamed into the shard a row group at a time, not held for the whole chunk
        nonlocal conf, ignored, total
        for k, (image_id, labels, c, sp_s) in enumerate(progress(imap(label_image, jobs), len(task.ids),
                                                                   f"labels, shard {task.index} (CRF)")):
            ignored += int((labels == IGNORE).sum())
            total += labels.size
            if c is not None:
                conf += c
            if sp_s is not None:
                sp_seconds.append(sp_s)
            if task.first + k < cfg["n_samples"]:
                image, mask = voc.load_image(task.root, image_id), voc.load_mask(task.root, image_id, n)
                with atomic_file(Path(task.samples_dir) / f"{image_id}.png") as tmp:
                    panels.labels_panel(image, [("pseudo label", labels)], mask, task.classes).save(tmp, format="PNG")
            yield image_id, labels

    count = labelstore.write_part(labelled(), task.out_dir, task.index)
    return {"count": count, "confusion": conf, "ignored": ignored, "total": total, "superpixel_seconds": sp_seconds}


def label_all(params: dict, maps_dir: str | Path, out_dir: Path, name: str, extra: dict | None = None) -> dict:
    """Labels of the maps in maps_dir -> out_dir (labelstore); metrics/<name>.json,
    plots/<name>_per_class.csv and reports/<name>/ (sample panels). extra: more metrics."""
    cfg = params["pseudo_labels"]
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    rows = {r["id"]: r for r in voc.split_rows(manifest, params["data"]["train_split"])}
    n = len(classes)
    where = {i: source for source, ids in shards.index(maps_dir) for i in ids}
    ids = list(where)
    conf, ignored, total, sp_seconds = np.zeros((n, n), np.int64), 0, 0, []
    start = time.perf_counter()
    with open_engine(params["scaleout"], workers=cfg["workers"]) as engine, \
            atomic_path(paths.REPORTS / name) as samples_dir, atomic_path(out_dir) as tmp:
        samples_dir.mkdir()
        tmp.mkdir()
        tasks = [LabelChunk(k, first, chunk, sorted({where[i] for i in chunk}), {i: rows[i]["has_mask"] for i in chunk},
                            str(Path(root).resolve()), cfg, classes, str(tmp.resolve()), str(samples_dir.resolve()))
                 for k, (first, chunk) in enumerate(engine.split(ids, cfg["shard_size"]))]
        count = 0
        for part in engine.run(label_chunk, tasks, f"{name} (CRF)"):
            count += part["count"]
            conf += part["confusion"]
            ignored += part["ignored"]
            total += part["total"]
            sp_seconds += part["superpixel_seconds"]
        remove_partials(tmp)   # what a killed worker left under a temporary name
        remove_partials(samples_dir)
        workers = engine.workers
    metrics = {"maps": str(maps_dir), **(extra or {}), "n_images": count,
               "ignored_fraction": round(ignored / max(total, 1), 4),
               "seconds": round(time.perf_counter() - start, 1), "workers": workers, "engine": engine.name}
    if sp_seconds:
        metrics["superpixel_seconds_per_image"] = round(float(np.mean(sp_seconds)), 3)
    if conf.sum():
        metrics = {**summary(conf, classes), **metrics}
    return write_stage_outputs(name, metrics, plots={f"{name}_per_class.csv": per_class_csv(metrics.get("per_class_iou", {}))},
                               reports={name: name.replace("/", "_") + "_samples"})
