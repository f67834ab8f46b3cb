"""Stage 3b: refined maps (the refiner's) for every training image, packed and scored like the raw maps."""
from __future__ import annotations

from config import paths
from localization.cams import export
from training import checkpoints
from training.runtime import resolve_device


def main(params: dict) -> dict:
    device = resolve_device(params["refiner"]["device"])
    model, config = checkpoints.load(paths.REFINER, device)
    return export(model, config["classes"], params, device, paths.REFINED_MAPS, "refined_maps")
