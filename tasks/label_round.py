"""A label round before the last (Wang et al., CVPR 2018; docs/methods.md, "Label rounds"): one DVC stage
per key of params.yaml's `rounds` (`python -m tasks label_round@r1`, dvc.yaml's foreach).

  labels of `rounds.<key>.maps` (the pseudo_labels stage's code) -> artifacts/rounds/<key>/pseudo_labels
  a segmenter trained on them (the train_segmenter code), scored on val at one scale
                                                           -> artifacts/rounds/<key>/segmenter.pt
  its tag-restricted predictions on the training images, expanded by mined class prototypes
  (wsss/training/relabel.py)                                    -> artifacts/rounds/<key>/maps
Each output has its own metrics under metrics/rounds/<key>/; the next round, or the pseudo_labels
stage after the last one, labels these maps.
"""
from __future__ import annotations

import copy
import time

import numpy as np

from wsss.config import paths
from wsss.dataset import voc
from wsss.labelling.batch import label_all
from wsss.scoring.metrics import summary
from wsss.stores import labelstore, mapstore
from wsss.training import checkpoints, distributed
from wsss.training.relabel import round_maps
from wsss.training.runtime import resolve_device, resolve_precision
from wsss.training.segmentation import train_and_score
from wsss.tracking.outputs import write_stage_outputs


@distributed.stage   # also under torchrun: every rank trains, rank 0 does the rest
def main(params: dict, key: str) -> dict:
    spec, out = params["rounds"][key], paths.round_dir(key)
    number = list(params["rounds"]).index(key) + 1
    labelling = copy.deepcopy(params)   # superpixel voting is the round's own choice (rounds.<key>.superpixels)
    labelling["pseudo_labels"]["superpixels"]["enabled"] = spec["superpixels"]
    # under torchrun rank 0 writes the labels while the others wait; they then read them to train
    labels = distributed.on_main(label_all, labelling, spec["maps"], out / "pseudo_labels",
                                 f"rounds/{key}/pseudo_labels", extra={"round": number}) or {}

    store = labelstore.read_dict(out / "pseudo_labels")

    def labels_for(image_id: str) -> np.ndarray:
        if image_id not in store:
            raise voc.DataError(f"image {image_id!r} has no pseudo label in {out / 'pseudo_labels'}")
        return store[image_id]

    seg = copy.deepcopy(params)   # this round's segmenter: a quick val score, its own epochs
    seg["segmenter"].update(val_scales=[1.0], val_flip=False, epochs=spec["epochs"] or params["segmenter"]["epochs"])
    scored = train_and_score(seg, labels_for, f"rounds/{key}/segmentation", out / "segmenter.pt", crf=False)

    start = time.perf_counter()
    device = resolve_device(params["segmenter"]["device"])
    model, config = checkpoints.load(out / "segmenter.pt", device)
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    rows = voc.split_rows(manifest, params["data"]["train_split"])
    scores: dict = {}
    maps = round_maps(model, root, rows, classes, spec, params["pseudo_labels"], device,
                      resolve_precision(device, params["segmenter"]["precision"]), scores)
    count = mapstore.write(maps, out / "maps", params["maps"]["shard_size"])
    metrics = {"round": number, "n_images": count, "seconds": round(time.perf_counter() - start, 1)}
    for name, conf in scores.items():
        if conf.sum():
            metrics[f"{name}_miou"] = summary(conf, classes)["miou"]
    write_stage_outputs(f"rounds/{key}/maps", metrics)
    return {"round": number, "labels_miou": labels.get("miou"), "val_miou": scored.get("val_miou"),
            "segmenter_maps_miou": metrics.get("segmenter_miou"), "maps_miou": metrics.get("mined_miou")}
