"""Stage 3b: refined maps (the refiner's) for every training image, packed and scored like the raw maps."""
from __future__ import annotations

from config import paths
from localization.cams import export
from training.checkpoints import CheckpointRef


def main(params: dict) -> dict:
    # the path, not a loaded network: engine dask loads it on each worker (an absolute path: theirs too)
    network = CheckpointRef(str(paths.REFINER.resolve()), params["refiner"]["device"])
    return export(network, params, paths.REFINED_MAPS, "refined_maps")
