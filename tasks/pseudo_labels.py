"""Stage 4: pseudo segmentation labels from the maps, a background cue and a dense CRF
(wsss/labelling/pseudo.py), over all training images on all cores, stored packed and scored
(wsss/labelling/batch.py).

`pseudo_labels.maps` picks the maps: the refined maps (the paper's path, the default), the raw
CAMs, or, with label rounds, the last round's segmenter maps: these labels are then the last
round's, the ones the segmenter of train_segmenter learns from.
"""
from __future__ import annotations

from wsss.config import paths
from wsss.labelling.batch import label_all


def main(params: dict) -> dict:
    return label_all(params, params["pseudo_labels"]["maps"], paths.PSEUDO_LABELS, "pseudo_labels",
                     extra={"round": len(params["rounds"]) + 1})
