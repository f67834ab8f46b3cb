"""Stage 2: class activation maps of the classifier for every tagged class of every training image,
multi-scale (+ flip), packed in Parquet shards and scored against masks where there are masks.
maps.method prm: peak response maps instead, and instance masks in artifacts/maps/instances.parquet."""
from __future__ import annotations

from config import paths
from localization.cams import export
from training import checkpoints
from training.runtime import resolve_device


def main(params: dict) -> dict:
    device = resolve_device(params["classifier"]["device"])
    model, config = checkpoints.load(paths.CLASSIFIER, device)
    return export(model, config["classes"], params, device, paths.MAPS, "maps", params["maps"]["method"])
