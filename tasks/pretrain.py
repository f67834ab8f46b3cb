"""Stage 0b (optional): self-supervised pretraining of the backbone on all the dataset's images
(every split's images; no tags, no masks) with SimCLR (wsss/pretraining/simclr.py), for data far from
ImageNet. `classifier.init: pretrain` starts the classifier from artifacts/pretrain/backbone.pt.

Off by default (pretrain.enabled: false): the stage then writes a note and trains nothing.
"""
from __future__ import annotations

from wsss.config import paths
from wsss.dataset import voc
from wsss.pretraining import simclr
from wsss.stores.atomic import atomic_path
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import trainer

NOTE = "pretrain disabled (pretrain.enabled: false): nothing trained\n"


def main(params: dict) -> dict:
    cfg = params["pretrain"]
    if not cfg["enabled"]:
        return _disabled()
    manifest, _, root = voc.read_manifest(paths.MANIFEST)
    ids = list(dict.fromkeys(r["id"] for r in manifest.to_pylist()))   # every split's images, each once
    with atomic_path(paths.PRETRAIN) as tmp:
        tmp.mkdir()
        metrics, history = simclr.pretrain(cfg, ids, root, tmp / paths.PRETRAIN_BACKBONE.name)
    return write_stage_outputs("pretrain", metrics, plots={"pretrain_train.csv": trainer.history_csv(history)})


def _disabled() -> dict:
    """DVC expects every declared output; say plainly that nothing was trained."""
    with atomic_path(paths.PRETRAIN) as tmp:
        tmp.mkdir()
        (tmp / "NOTE.txt").write_text(NOTE)
    return write_stage_outputs("pretrain", {"enabled": False}, plots={"pretrain_train.csv": "epoch,loss,seconds\n"})
