"""Stage 5: the DeepLab-style segmenter trained on the pseudo labels (255 ignored), scored on val
(wsss.training.segmentation.train_and_score, which the ground-truth reference stage calls too)."""
from __future__ import annotations

from wsss.config import paths
from wsss.dataset import voc
from wsss.stores import labelstore
from wsss.training import distributed
from wsss.training.segmentation import train_and_score


@distributed.stage   # also under torchrun: every rank trains, rank 0 does the rest
def main(params: dict) -> dict:
    labels = labelstore.read_dict(paths.PSEUDO_LABELS)

    def labels_for(image_id: str):
        if image_id not in labels:
            raise voc.DataError(f"image {image_id!r} has no pseudo label in {paths.PSEUDO_LABELS}")
        return labels[image_id]

    return train_and_score(params, labels_for, "segmentation", paths.SEGMENTER)
