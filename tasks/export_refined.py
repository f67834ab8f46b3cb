"""Stage 3b: refined maps for every training image, packed and scored like the raw maps."""
from __future__ import annotations

from tasks import paths
from tasks.export_maps import export, load_model
from tasks.runtime import resolve_device


def main(params: dict) -> dict:
    device = resolve_device(params["refiner"]["device"])
    model, classes = load_model(paths.REFINER, device)
    return export(model, classes, params, device, paths.REFINED_MAPS, "refined_maps")
