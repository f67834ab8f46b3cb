"""Stage 5b: the same segmenter and schedule trained on the ground-truth masks of the same images.

Its val mIoU is the ceiling the weak model is compared with (weak-to-full ratio). Users without
masks set reference.enabled: false; the stage then records that and trains nothing.
"""
from __future__ import annotations

from wsss.dataset import voc
from wsss.config import paths
from wsss.stores.atomic import atomic_path
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import distributed
from wsss.training.segmentation import train_and_score


@distributed.stage   # also under torchrun: every rank trains, rank 0 does the rest
def main(params: dict) -> dict:
    if not params["reference"]["enabled"]:
        return distributed.on_main(_disabled) or {}   # nothing trains: under torchrun rank 0 writes the note
    _, classes, root = voc.read_manifest(paths.MANIFEST)

    def labels_for(image_id: str):
        mask = voc.load_mask(root, image_id, len(classes))
        if mask is None:
            raise voc.DataError(f"image {image_id!r} has no mask: set reference.enabled: false for tag-only data")
        return mask

    # Always from ImageNet: a fully supervised model has no refiner to start from (and this stage then
    # need not re-run whenever the refiner changes).
    params = {**params, "segmenter": {**params["segmenter"], "init": "imagenet"}}
    return {"enabled": True, **train_and_score(params, labels_for, "reference", paths.REFERENCE,
                                               crf=params["reference"]["crf"])}


def _disabled() -> dict:
    """DVC expects every declared output; say plainly that nothing was trained."""
    note = "reference disabled (reference.enabled: false): nothing trained\n"
    with atomic_path(paths.REFERENCE) as tmp:
        tmp.write_text(note)
    with atomic_path(paths.REPORTS / "reference") as tmp:
        tmp.mkdir()
        (tmp / "README.txt").write_text(note)
    return write_stage_outputs("reference", {"enabled": False},
                               plots={"reference_train.csv": "epoch,loss,seconds\n", "reference_per_class.csv": "class,iou\n"})
