"""Stage 0a: the embedded demo dataset (wsss/dataset/demo.py), generated from a seed; nothing is downloaded."""
from __future__ import annotations

from wsss.config.paths import DEMO_ROOT
from wsss.dataset.demo import generate


def main(params: dict) -> dict:
    cfg = params["demo"]
    generate(DEMO_ROOT, cfg["seed"], cfg["n_train"], cfg["n_val"], cfg["image_size"])
    return {"root": str(DEMO_ROOT), "n_train": cfg["n_train"], "n_val": cfg["n_val"]}
