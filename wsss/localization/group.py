"""Training and map export of the group-wise classifier (models/group.py, classifier.group).

Training: batches of groups whose images share a tag (wsss/dataset/groups.py), the classification loss
on the group-refined features (`GroupLoss`), plus, with weight `single_weight`, the same loss on
each image alone (a group of one passing messages with itself: the path val scoring and
`maps.group_export: single` run), from the same backbone pass.

Export (`maps.group_export`): single, each image is a group of one (the plain map export calls
the network as it calls any classifier); neighbours, each image is grouped with its
classifier.group.size - 1 nearest training images: those sharing at least one of its tags, ranked
by tag overlap (Jaccard) plus the cosine similarity of their global features (the mean of the
classifier's feature map at NEIGHBOUR_SCALE). An image no other one shares a tag with stays a
group of one. The neighbours join at NEIGHBOUR_SCALE (about the size the training crops show
objects at) whatever the scale of the image's own view.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.config.errors import StageError
from wsss.dataset import images, voc
from wsss.dataset.groups import GroupBatchSampler
from models.registry import LOSSES
from wsss.training import distributed
from wsss.training.runtime import _reseed_worker, place, resolve_device

class GroupExportError(StageError):
    kind = "params error"


NEIGHBOUR_SCALE = 0.5   # neighbours' features and the global descriptors: VOC images at ~250 px, like the crops


def loader(dataset, tags: list[list[int]], cfg: dict) -> torch.utils.data.DataLoader:
    """The classifier's batches as groups (classifier.batch_size = groups x group.size)."""
    size = cfg["group"]["size"]
    if cfg["batch_size"] % size:
        raise ValueError(f"classifier.batch_size {cfg['batch_size']} is not a multiple of classifier.group.size {size}")
    sampler = GroupBatchSampler(tags, size, cfg["batch_size"] // size, cfg["seed"], distributed.rank(),
                                distributed.world_size())
    if distributed.active() and hasattr(dataset, "rng"):
        dataset.rng = np.random.default_rng(distributed.rank_seed(cfg["seed"]))
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg["num_workers"], worker_init_fn=_reseed_worker,
        pin_memory=resolve_device(cfg.get("device", "cpu")).type == "cuda",
        generator=torch.Generator().manual_seed(distributed.rank_seed(cfg["seed"])))


def batch_metrics(loader) -> dict:
    """distributed.batch_metrics for a loader of groups (its batch_sampler sets the batch)."""
    sampler = loader.batch_sampler
    per_rank = sampler.size * sampler.groups // sampler.world
    return {"world_size": sampler.world, "batch_per_rank": per_rank, "global_batch": per_rank * sampler.world,
            "group_size": sampler.size, "groups_alone": len(sampler.alone)}


class GroupLoss:
    """The classifier's batch loss on groups: multi-label soft margin on the group-refined logits
    (+ single_weight x the same on each image alone); with context pasting (`paste`: a
    wsss.localization.context_paste.ContextPaste) the images and targets are pasted first."""

    def __init__(self, cfg: dict, paste=None):
        self.size, self.single_weight, self.paste = cfg["size"], cfg["single_weight"], paste

    def __call__(self, model, batch) -> torch.Tensor:
        images_, targets = batch
        targets_in, pasted = targets, None
        if self.paste is not None:
            images_, targets_in, pasted = self.paste.paste(images_, targets)
        features = model.features(images_)
        logits, maps = model.readout(features, self.size)
        criterion = LOSSES.get("multilabel_soft_margin")
        loss = criterion(logits, targets_in)
        if self.single_weight > 0:
            loss = loss + self.single_weight * criterion(model.readout(features, 1)[0], targets_in)
        if self.paste is not None:
            self.paste.refill(images_, targets, maps, pasted)
        return loss


def _view(image: np.ndarray, scale: float, device) -> torch.Tensor:
    h, w = image.shape[:2]
    small = images.resize_long(image, max(1, round(max(h, w) * scale)))
    return place(images.to_tensor(small)[None], device)


@torch.no_grad()
def descriptors(model, root, ids: list[str], device) -> np.ndarray:
    """N x C: each image's L2-normalised mean feature at NEIGHBOUR_SCALE."""
    model.eval()
    out = []
    for image_id in tqdm(ids, desc="group neighbours: descriptors", unit="img", dynamic_ncols=True):
        feats = model.features(_view(voc.load_image(root, image_id), NEIGHBOUR_SCALE, device))
        out.append(F.normalize(feats.float().mean(dim=(2, 3)), dim=1)[0].cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def nearest(tags: list[list[int]], desc: np.ndarray, k: int, block: int = 1024) -> list[list[int]]:
    """For each image, the indices of up to k others sharing a tag with it, best first by Jaccard
    tag overlap + descriptor cosine (ties: lower index first)."""
    n = len(tags)
    n_cls = max((t for ts in tags for t in ts), default=0) + 1
    hot = np.zeros((n, n_cls), np.float32)
    for i, ts in enumerate(tags):
        hot[i, list(set(ts))] = 1.0
    count = hot.sum(1)
    out = []
    for start in range(0, n, block):   # rows in blocks: n x n scores never held whole
        rows = slice(start, min(start + block, n))
        inter = hot[rows] @ hot.T
        union = count[rows, None] + count[None, :] - inter
        score = inter / np.maximum(union, 1) + desc[rows] @ desc.T
        score[inter == 0] = -np.inf
        score[np.arange(score.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf   # not itself
        for r in score:
            order = np.argsort(-r, kind="stable")[:k]
            out.append([int(j) for j in order if np.isfinite(r[j])])
    return out


def neighbour_table(model, root, rows: list[dict], device) -> dict[str, list[str]]:
    """{image id: ids of its group.size - 1 nearest images} over `rows` (manifest rows: id, tags)."""
    ids = [r["id"] for r in rows]
    found = nearest([r["tags"] for r in rows], descriptors(model, root, ids, device), model.group_size - 1)
    return {ids[i]: [ids[j] for j in js] for i, js in enumerate(found)}


def context(model, root, ids: list[str], device) -> list[torch.Tensor]:
    """The neighbours' feature maps (1 x C x h x w each) that join an image's group at export."""
    return [model.features(_view(voc.load_image(root, i), NEIGHBOUR_SCALE, device)) for i in ids]
