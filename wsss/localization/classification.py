"""The image-level classifier whose maps localize: multi-hot targets, its loss, DRS statistics,
average precision on held-out tags (weak labels only; masks are never read here)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from wsss.config import paths
from wsss.dataset import images, voc
from wsss.localization.context_paste import ContextPaste
from wsss.localization.group import GroupLoss
from models.classifier import build_localizer
from models.drs import LearnableDRS
from models.registry import LOSSES
from wsss.pretraining import backbone as pretrained_backbone
from wsss.training import distributed, trainer
from wsss.training.runtime import place


def build_classifier(cfg: dict, n_fg: int, pretrain_path=paths.PRETRAIN_BACKBONE):
    """The untrained classifier of params' classifier section: the CAM classifier, or with
    group.enabled the group-wise one; classifier.init pretrain: its backbone's weights from the
    pretrain stage (wsss/pretraining/backbone.py) instead of ImageNet."""
    model = build_localizer({**cfg, "pretrained": cfg["pretrained"] and cfg["init"] != "pretrain"}, n_fg)
    if cfg["init"] == "pretrain":
        pretrained_backbone.load_into(model.backbone, cfg["backbone"], pretrain_path, "classifier.init")
    return model


def multi_hot(tags: list[int], n_fg: int) -> torch.Tensor:
    target = torch.zeros(n_fg)
    target[[t - 1 for t in tags]] = 1.0  # class c (1..C) is output c - 1
    return target


class TagTarget:
    """Multi-hot image-level tags for `wsss.dataset.crops.TrainingCrops` (background is not a class here)."""

    dense, fill = False, 0.0

    def __init__(self, tags: dict[str, list[int]], n_fg: int):
        self.tags, self.n_fg = tags, n_fg

    def load(self, image_id: str, source_hw, size_hw) -> list[int]:
        return self.tags[image_id]

    def to_tensor(self, tags: list[int]) -> torch.Tensor:
        return multi_hot(tags, self.n_fg)


def drs_deltas(model) -> list[float]:
    """Mean delta of each learnable DRS module on the last batch (empty without them)."""
    return [float(m.last_delta.mean()) for m in model.modules()
            if isinstance(m, LearnableDRS) and m.last_delta is not None]


def classification_loss(model, batch):
    images_, targets = batch
    logits, _ = model(images_)
    return LOSSES.get("multilabel_soft_margin")(logits, targets)


def fit(model, loader, cfg: dict, device: torch.device) -> list[dict]:
    def stats():
        deltas = drs_deltas(model)
        return {"drs_delta_mean": float(np.mean(deltas)) if deltas else None}

    paste = cfg["context_paste"]
    seed = cfg["seed"] + distributed.rank()   # under torchrun each rank pastes its own draws; rank 0 as one process
    loss = ContextPaste(paste, len(loader), seed) if paste["prob"] > 0 else classification_loss
    if cfg["group"]["enabled"]:   # batches of groups (wsss/localization/group.py), pasting inside them
        loss = GroupLoss(cfg["group"], loss if isinstance(loss, ContextPaste) else None)
    return trainer.fit(model, loader, cfg, device, loss, "train classifier", stats)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per class (NaN where a class has no positive), ranking by score; tied scores rank in row
    order, as the val mAP always has (sklearn alone would score a tie as one threshold)."""
    from sklearn.metrics import average_precision_score   # imported here: ~1 s that other stages skip

    aps = np.full(scores.shape[1], np.nan)
    # distinct scores with the same order: each row's rank under a stable sort, best first
    rank = -np.argsort(np.argsort(-scores, axis=0, kind="stable"), axis=0)
    for c in range(scores.shape[1]):
        if targets[:, c].sum() > 0:
            aps[c] = average_precision_score(targets[:, c], rank[:, c])
    return aps


@torch.no_grad()
def predict_scores(model, root, rows: list[dict], long_side: int, device) -> np.ndarray:
    place(model.eval(), device)
    out = []
    for row in tqdm(rows, desc="classifier val", unit="img", dynamic_ncols=True):
        image = images.resize_long(voc.load_image(root, row["id"]), long_side)
        logits, _ = model(place(images.to_tensor(image)[None], device))
        out.append(torch.sigmoid(logits)[0].cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0))
