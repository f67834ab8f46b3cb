"""What the segmentation stages share: labelled crops, training, evaluation with and without CRF.

The weak model (pseudo labels) and the reference (ground-truth masks) differ only in where the
labels come from, so both call `train` and `evaluate` with their own label source.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from models.segmenter import build_segmenter
from tasks import data, images, trainer
from tasks.crf import dense_crf
from tasks.metrics import IGNORE, confusion
from tasks.runtime import load_checkpoint, place, training_loader


class LabelledCrops(Dataset):
    def __init__(self, root, ids: list[str], labels: Callable[[str], np.ndarray], crop: int,
                 resize_long: tuple[int, int], seed: int):
        self.root, self.ids, self.labels, self.crop, self.resize = root, ids, labels, crop, resize_long
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image, labels = data.load_image(self.root, image_id), self.labels(image_id)
        if labels.shape != image.shape[:2]:
            raise data.DataError(f"labels for image {image_id!r}: size {labels.shape} differs from {image.shape[:2]}")
        long_side = images.random_long_side(self.rng, self.resize)
        image = images.resize_long(image, long_side)
        labels = images.resize_long(labels, long_side, Image.NEAREST)
        image, labels = images.flip_and_crop(self.rng, self.crop, image, (labels, IGNORE))
        return images.to_tensor(image), torch.from_numpy(labels.astype(np.int64))


def segmentation_loss(model, batch):
    x, labels = batch
    return F.cross_entropy(model(x), labels, ignore_index=IGNORE)


def train(cfg: dict, root, ids: list[str], labels: Callable, n_classes: int, device, desc: str):
    model = build_segmenter(cfg, n_classes)
    loader = training_loader(
        LabelledCrops(root, ids, labels, cfg["crop_size"], tuple(cfg["resize_long"]), cfg["seed"]), cfg)
    history = trainer.fit(model, loader, cfg, device, segmentation_loss, desc)
    return model, history


@torch.no_grad()
def predict_probs(model, image: np.ndarray, device, flip: bool) -> np.ndarray:
    """Softmax class probabilities (C x H x W) for one image at its own size."""
    model.eval()
    x = place(images.to_tensor(image)[None], device)
    logits = model(x)
    if flip:
        logits = (logits + model(x.flip(-1)).flip(-1)) / 2
    return torch.softmax(logits[0], 0).cpu().numpy()


def evaluate(model, root, rows: list[dict], n_classes: int, cfg: dict, device, samples: int = 0):
    """(confusion without CRF, confusion with CRF, sample panels) over rows that have masks."""
    plain = np.zeros((n_classes, n_classes), np.int64)
    refined = np.zeros_like(plain)
    panels = []
    for row in tqdm([r for r in rows if r["has_mask"]], desc="evaluate val", unit="img", dynamic_ncols=True):
        image = data.load_image(root, row["id"])
        mask = data.load_mask(root, row["id"], n_classes)
        probs = predict_probs(model, image, device, cfg["val_flip"])
        pred = probs.argmax(0).astype(np.uint8)
        pred_crf = dense_crf(image, probs, cfg["crf"]).argmax(0).astype(np.uint8)
        plain += confusion(mask, pred, n_classes)
        refined += confusion(mask, pred_crf, n_classes)
        if len(panels) < samples:
            panels.append((row["id"], np.concatenate(
                [image, images.colour_labels(pred), images.colour_labels(pred_crf), images.colour_labels(mask)], 1)))
    return plain, refined, panels


def confusion_image(conf: np.ndarray, cell: int = 16) -> np.ndarray:
    """Row-normalised confusion matrix (ground truth rows, predictions columns) as a heat map."""
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    heat = images.colourise(rows)
    return np.kron(heat, np.ones((cell, cell, 1), np.uint8))


def checkpoint_config(cfg: dict, classes: list[str]) -> dict:
    return {"segmenter": cfg, "classes": classes}


def load_segmenter(path, device):
    ckpt = load_checkpoint(path)
    cfg, classes = ckpt["config"]["segmenter"], ckpt["config"]["classes"]
    model = build_segmenter({**cfg, "pretrained": False}, len(classes))
    model.load_state_dict(ckpt["state_dict"])
    return place(model.eval(), device), cfg, classes
