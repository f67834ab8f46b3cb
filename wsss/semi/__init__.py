"""Few masks: a SEMI-supervised segmenter (stage train_semi, params.yaml `semi`).

A user who can draw masks for a few training images lists them (or a count chosen by seed);
training uses those masks, the pseudo labels of the other training images and the images
themselves. Nothing here is weakly supervised, and the stage's metrics and MLflow run say so.

    masks.py       which images are masked (seeded), the file that records them, and the only
                   reader of training masks (it refuses every other id)
    data.py        training crops with their image index, batches mixing masked and unmasked images
    losses.py      the supervised part (masks, pseudo labels), the ramp-up of unsupervised terms
    cotraining.py  co-training ensemble (Peng et al. 2020): agreement + adversarial diversity
    cycle.py       cycle consistency (Mondal et al. 2019): mask -> image generator, discriminators
    stage.py       the stage's body: choose, record, train (wsss/training/segmentation.py), score
"""
