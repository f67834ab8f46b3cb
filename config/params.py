"""Load and validate params.yaml.

The schema below is the only place that knows what a key may hold; a bad key, type or value
raises ParamsError naming the dotted key, before any stage does work.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stores.atomic import read_yaml

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key."""


@dataclass(frozen=True)
class F:
    """One leaf of the schema: a type, optional bounds or choices."""

    kind: type | tuple
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    item: "F | None" = None  # for lists
    length: int | None = None  # exact list length

    def check(self, key: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ParamsError(f"{key}: expected {_names(kinds)}, got a boolean ({value!r})")
        if not isinstance(value, kinds):
            raise ParamsError(f"{key}: expected {_names(kinds)}, got {type(value).__name__} ({value!r})")
        if self.choices is not None and value not in self.choices:
            raise ParamsError(f"{key}: {value!r} is not one of {list(self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            raise ParamsError(f"{key}: {value!r} does not match {self.pattern}")
        if self.min is not None and value < self.min:
            raise ParamsError(f"{key}: {value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ParamsError(f"{key}: {value!r} is above the maximum {self.max}")
        if isinstance(value, list):
            if self.length is not None and len(value) != self.length:
                raise ParamsError(f"{key}: expected {self.length} items, got {len(value)}")
            if self.item is not None:
                value = [self.item.check(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return value


def _names(kinds) -> str:
    return " or ".join(k.__name__ for k in kinds)


POS_INT = F(int, min=1)
PROB = F(float, min=0.0, max=1.0)

# What every trained network's section holds: the optimisation budget and schedule.
TRAINING = {
    "freeze_bn": F(bool),
    "freeze_blocks": F(int, min=0, max=1000),   # stem + first N backbone blocks not trained
    "epochs": F(int, min=1, max=1000),
    "batch_size": F(int, min=1, max=1024),
    "crop_size": F(int, min=32, max=2048),
    "resize_long": F(list, item=F(int, min=16, max=4096), length=2),
    "optimizer": F(str, choices=("sgd", "adamw")),
    "lr_schedule": F(str, choices=("poly", "step")),
    "lr_step_epochs": F(list, item=F(int, min=1)),   # step schedule: lr x 0.1 at each
    "lr": F(float, min=0.0, max=10.0),
    "new_layer_lr_mult": F(float, min=0.0, max=1000.0),
    "weight_decay": F(float, min=0.0, max=1.0),
    "momentum": F(float, min=0.0, max=1.0),
    "seed": F(int, min=0),
    "device": F(str, pattern=r"auto|cpu|cuda(:[0-9]+)?"),
    "precision": F(str, choices=("auto", "fp32", "bf16")),   # bf16: autocast; auto: bf16 where native (tasks/runtime.py)
    "num_workers": F(int, min=0, max=64),
    "ema_decay": F(float, min=0.0, max=0.9999),   # > 0: end with the moving average of the weights (trainer.py)
}
# A CAM-style network: backbone, output stride, the paper's extra convs.
LOCALIZER = {
    "backbone": F(str),
    "pretrained": F(bool),
    "output_stride": F(int, choices=(8, 16, 32)),
    "extra_convs": F(int, min=0, max=8),
    "extra_channels": POS_INT,
    "extra_kernel": F(int, choices=(1, 3)),   # the paper's 3x3, or 1x1 (no new spatial mixing)
}
CRF = {
    "iterations": F(int, min=1, max=100),
    "gaussian_sxy": F(float, min=0.0, max=1000.0),
    "gaussian_compat": F(float, min=0.0, max=1000.0),
    "bilateral_sxy": F(float, min=0.0, max=1000.0),
    "bilateral_srgb": F(float, min=0.0, max=1000.0),
    "bilateral_compat": F(float, min=0.0, max=1000.0),
}
SEGMENTER = {
    "backbone": F(str),
    "head": F(str),
    "pretrained": F(bool),
    "output_stride": F(int, choices=(8, 16, 32)),
    "aspp_channels": POS_INT,
    "aspp_rates": F(list, item=F(int, min=1, max=64)),
    "low_level_stride": F(int, choices=(4, 8)),                 # head aspp_plus: the backbone features it fuses
    "val_flip": F(bool),
    "val_scales": F(list, item=F(float, min=0.1, max=4.0)),   # inference scales, logits averaged
    "loss": F(str),                                             # models/losses.py: cross_entropy | small_loss_ce
    "loss_drop": F(float, min=0.0, max=0.9),                    # small_loss_ce: fraction left out per class
    "init": F(str, choices=("imagenet", "refiner")),            # refiner: warm start from artifacts/refiner.pt
    "loss_stride": F(int, choices=(1, 2, 4, 8)),                # loss on every Nth label pixel (segmentation.loss_grid)
    **TRAINING,
}

SCHEMA: dict = {
    "profile": F(str, pattern=r"[a-z0-9_]+"),
    "data": {
        "root": F(str),
        "train_split": F(str, pattern=r"[\w.-]+"),
        "val_split": F(str, pattern=r"[\w.-]+"),
    },
    "demo": {
        "seed": F(int, min=0),
        "n_train": F(int, min=2, max=100000),
        "n_val": F(int, min=1, max=100000),
        "image_size": F(int, min=48, max=2048),
    },
    "classifier": {
        **LOCALIZER,
        "drs": {
            "mode": F(str, choices=("none", "fixed", "learnable")),
            "delta": F(float, min=0.0, max=1.0),
            "placement": F(list, item=F(str, pattern=r"extra|head|all|blocks:[1-9][0-9]*")),
        },
        # tasks/context_paste.py: objects cut by the classifier's own maps pasted onto other images
        "context_paste": {
            "prob": PROB,                                 # chance an image gets an object (0: off)
            "start_epoch": F(int, min=0, max=1000),       # epochs of plain training first
            "mask_threshold": F(float, min=0.0, max=0.99),  # of the max-normalised map: the object's pixels
            "max_side": F(float, min=0.05, max=1.0),      # pasted boxes scaled to at most this of the image side
        },
        **TRAINING,
        "limit": F(int, min=0),
    },
    "maps": {
        "scales": F(list, item=F(float, min=0.1, max=4.0)),
        "flip": F(bool),
        "threshold_start": PROB,
        "threshold_stop": PROB,
        "threshold_step": F(float, min=0.001, max=0.5),
        "n_overlays": F(int, min=0, max=1000),
        "shard_size": F(int, min=1, max=100000),
        "precision": F(str, choices=("auto", "fp32", "bf16")),   # of the raw and the refined map export
    },
    "refiner": {
        **LOCALIZER,
        "head": F(str, choices=("cam", "aspp")),   # 1x1 conv on the features, or the segmenter's ASPP head
        "aspp_channels": POS_INT,
        "aspp_rates": F(list, item=F(int, min=1, max=64)),
        **TRAINING,
    },
    "pseudo_labels": {
        "source": F(str, choices=("refined", "raw")),  # which maps become labels
        "bg_threshold": PROB,
        "temperature": F(float, min=0.001, max=10.0),
        "uncertain_margin": PROB,
        "saliency_dir": F(str),            # under data.root; empty: use bg_threshold
        "saliency_threshold": PROB,
        "claim_threshold": PROB,
        "crf": CRF,
        "workers": F(int, min=0, max=256),  # 0: all cores
        "shard_size": F(int, min=1, max=100000),
        "n_samples": F(int, min=0, max=1000),
    },
    # min_prob: classes below it everywhere are left out of the val CRF (tasks/crf.py, crf_argmax)
    "segmenter": {**SEGMENTER, "crf": {**CRF, "min_prob": F(float, min=0.0, max=0.5)}},
    "reference": {"enabled": F(bool), "crf": F(bool)},   # crf: also score it with CRF post-processing
}

# Keys a file may leave out, with their defaults.
DEFAULTS = {"profile": "cpu"}


def _validate(node: Any, schema: Any, prefix: str) -> Any:
    if isinstance(schema, F):
        return schema.check(prefix, node)
    if not isinstance(node, dict):
        raise ParamsError(f"{prefix or 'params'}: expected a mapping, got {type(node).__name__}")
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ParamsError(f"{dotted}: unknown key (known here: {known})")
        out[key] = _validate(value, schema[key], dotted)
    for key in schema:
        if key not in out:
            dotted = f"{prefix}.{key}" if prefix else key
            if dotted in DEFAULTS:
                out[key] = DEFAULTS[dotted]
            else:
                raise ParamsError(f"{dotted}: missing")
    return out


def _cross_checks(p: dict) -> None:
    m = p["maps"]
    if m["threshold_start"] >= m["threshold_stop"]:
        raise ParamsError("maps.threshold_start: must be below maps.threshold_stop")
    if not m["scales"]:
        raise ParamsError("maps.scales: needs at least one scale")
    lo, hi = p["classifier"]["resize_long"]
    if lo > hi:
        raise ParamsError("classifier.resize_long: the first value must not exceed the second")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(params: dict, assignment: str) -> dict:
    """Apply `a.b.c=value` (value parsed as YAML) to a copy of params."""
    if "=" not in assignment:
        raise ParamsError(f"override {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    out = copy.deepcopy(params)
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
    return out


def validate(raw: dict) -> dict:
    """Apply the profile overlay, then check every key; returns a new dict."""
    if not isinstance(raw, dict):
        raise ParamsError("params: expected a mapping at the top level")
    profile = raw.get("profile", DEFAULTS["profile"])
    if profile != "cpu":
        path = PROFILES_DIR / f"{profile}.yaml"
        if not path.is_file():
            raise ParamsError(f"profile: no profile {profile!r} (looked for {path})")
        raw = deep_merge(raw, yaml.safe_load(path.read_text()) or {})
    params = _validate(raw, SCHEMA, "")
    _cross_checks(params)
    return params


def load(path: str | Path = "params.yaml", overrides: list[str] | tuple = ()) -> dict:
    raw = read_yaml(path, ParamsError)
    for assignment in overrides:
        raw = set_dotted(raw, assignment)
    return validate(raw)
