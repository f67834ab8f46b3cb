"""Stage 3: localization-map refinement learning (DRS paper, section 3.3; core in
wsss/localization/refinement.py). `refiner.head` picks the network: `aspp` (the segmenter's DeepLab
head: dilated context per pixel) or `cam` (a 1x1 conv on the backbone's features, like the
classifier). On voc2012-mini the 1x1 version only learned to predict near-zero maps (refined 31.27
vs raw 38.24 mIoU); the ASPP head learns the shapes (43.22).
`refiner.method: random_walk` trains AffinityNet's pixel-affinity network instead (core in
wsss/localization/affinity.py): no map regression, pair labels from the maps' confident regions; the
refined-map export then walks the maps over its affinities. Saves artifacts/refiner.pt either way.
"""
from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from wsss.config import paths
from wsss.dataset import voc
from wsss.dataset.crops import TrainingCrops
from wsss.localization import affinity
from wsss.localization.refinement import MapTarget, refinement_loss
from models.affinity import build_affinity
from models.classifier import build_localizer
from models.networks import to_config
from wsss.stores import mapstore
from wsss.stores.labelstore import PackedLabels
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import checkpoints, distributed, trainer
from wsss.training.runtime import resolve_device, seed_everything, training_loader


def confident_crf_labels(root, stored, aff: dict, crf_cfg: dict) -> PackedLabels:
    """{id: CRF-snapped confident labels at image size} of every training image, once before training."""
    def labelled():
        for image_id in tqdm(list(stored), desc="confident regions (CRF)", unit="img"):
            classes, maps_u8 = stored[image_id]
            yield image_id, affinity.crf_confident_labels(voc.load_image(root, image_id), maps_u8.astype(np.float32) / 255,
                                                          classes, aff["fg_threshold"], aff["bg_threshold"], crf_cfg)
    return PackedLabels(labelled())


@distributed.stage   # also under torchrun: every rank trains, rank 0 does the rest
def main(params: dict) -> dict:
    cfg = params["refiner"]
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    _, classes, root = voc.read_manifest(paths.MANIFEST)
    stored = mapstore.read_dict(paths.MAPS)   # {id: (classes, uint8 maps)}, held compressed
    n_fg = len(classes) - 1
    if cfg["method"] == "random_walk":
        aff = cfg["affinity"]
        kind, model, loss = "affinity", build_affinity(cfg), affinity.batch_loss(aff["radius"], aff["stride"])
        crf = confident_crf_labels(root, stored, aff, params["pseudo_labels"]["crf"]) if aff["crf"] else None
        target = affinity.ConfidentTarget(stored, aff["fg_threshold"], aff["bg_threshold"], crf)
    else:
        kind, model, loss, target = "localizer", build_localizer(cfg, n_fg), refinement_loss, MapTarget(stored, n_fg)
    loader = training_loader(TrainingCrops(root, list(stored), target, cfg["crop_size"], cfg["resize_long"],
                                           cfg["seed"]), cfg)
    start = time.perf_counter()
    history = trainer.fit(model, loader, cfg, device, loss, "train refiner")
    checkpoints.save(paths.REFINER, model, to_config(kind, cfg, classes))
    metrics = {"method": cfg["method"], "train_seconds": round(time.perf_counter() - start, 1), "epochs": cfg["epochs"],
               "n_train": len(stored), "final_loss": round(history[-1]["loss"], 6), "device": str(device),
               **distributed.batch_metrics(loader)}
    return write_stage_outputs("refiner", metrics, plots={"refiner_train.csv": trainer.history_csv(history)})
