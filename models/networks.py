"""One round trip for every network: `to_config` is what a checkpoint stores beside the weights,
`from_config` rebuilds the model from it. Classifier, refiner and segmenters all go through here."""
from __future__ import annotations

from torch import nn

from models.affinity import build_affinity
from models.classifier import build_localizer
from models.ensemble import build_ensemble
from models.segmenter import build_segmenter

BUILDERS = {"localizer": build_localizer, "affinity": build_affinity,   # affinity: refiner.method random_walk
            "segmenter": build_segmenter,
            "segmenter_ensemble": build_ensemble}   # train_semi's co-training members (models/ensemble.py)


def to_config(kind: str, section: dict, classes: list[str]) -> dict:
    """kind: localizer (CAM classifier, refiner), segmenter or segmenter_ensemble (section: the segmenter's
    plus `members`); section: its params.yaml section."""
    if kind not in BUILDERS:
        raise KeyError(f"unknown network kind {kind!r}; kinds: {sorted(BUILDERS)}")
    return {"kind": kind, "network": dict(section), "classes": list(classes)}


def normalise(config: dict) -> dict:
    """Configs of checkpoints saved before `kind` existed: {"classifier": ...} or {"segmenter": ...}."""
    if "kind" in config:
        return config
    for old, kind in (("classifier", "localizer"), ("segmenter", "segmenter")):
        if old in config:
            return to_config(kind, config[old], config["classes"])
    raise ValueError(f"checkpoint config has none of kind/classifier/segmenter (keys: {sorted(config)})")


def from_config(config: dict, pretrained: bool = False) -> nn.Module:
    """The untrained network a config describes. pretrained=False: the weights come from the
    checkpoint, so no ImageNet weights are read."""
    config = normalise(config)
    section = {**config["network"], "pretrained": pretrained}
    n_classes = len(config["classes"]) - (1 if config["kind"] == "localizer" else 0)  # localizers: no background
    return BUILDERS[config["kind"]](section, n_classes)
