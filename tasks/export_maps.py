"""Stage 2: class activation maps of the classifier for every tagged class of every training image,
multi-scale (+ flip), packed in Parquet shards and scored against masks where there are masks.
maps.method prm: peak response maps instead, and instance masks in artifacts/maps/instances.parquet."""
from __future__ import annotations

from wsss.config import paths
from wsss.localization.cams import export
from wsss.training.checkpoints import CheckpointRef


def main(params: dict) -> dict:
    # the path, not a loaded network: engine dask loads it on each worker (an absolute path: theirs too)
    network = CheckpointRef(str(paths.CLASSIFIER.resolve()), params["classifier"]["device"])
    return export(network, params, paths.MAPS, "maps", params["maps"]["method"])
