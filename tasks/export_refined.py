"""Stage 3b: refined maps (the refiner's) for every training image, packed and scored like the raw maps.
An affinity refiner (refiner.method random_walk) refines by walking the raw maps over its affinities."""
from __future__ import annotations

from wsss.config import paths
from wsss.localization.cams import export
from wsss.localization.propagation import WalkExport
from wsss.stores import shards
from wsss.training.checkpoints import CheckpointRef


def main(params: dict) -> dict:
    # the path, not a loaded network: engine dask loads it on each worker (an absolute path: theirs too)
    network = CheckpointRef(str(paths.REFINER.resolve()), params["refiner"]["device"])
    walk = None
    if network.config()["kind"] == "affinity":
        sources = [path for path, _ in shards.index(paths.MAPS)]
        walk = WalkExport(sources, params["refiner"]["affinity"])   # the walk's settings: no retraining to change them
    return export(network, params, paths.REFINED_MAPS, "refined_maps", walk=walk)
