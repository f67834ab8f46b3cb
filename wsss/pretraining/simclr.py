"""Self-supervised backbone pretraining with SimCLR (Chen et al., ICML 2020) on the dataset's own
images: no tags, no masks.

Why SimCLR: the few-shot paper this follows pretrained with AMDIM, a contrastive (InfoNCE) method;
SimCLR is its simplest current equivalent (one global view against another instead of AMDIM's
local-global pairs), and its negatives make a collapsed embedding (every image the same vector)
the loss's worst case, not a minimum, so the small, CPU-sized batches here cannot fall into it.
BYOL avoids negatives and so large batches, but needs a momentum target network (a second
backbone in memory) and can collapse, which a short CPU run cannot afford to discover late.

Each image gives two views (random resized crop, flip, colour jitter, grey, blur); the backbone's
pooled feature goes through a projection MLP, and the NT-Xent loss asks each view to pick its
partner among the 2 x batch - 1 other views of the batch. The projection head is dropped after
training; the backbone is what downstream networks start from (wsss/pretraining/backbone.py).
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from wsss.dataset import voc
from models.backbones import build_backbone
from wsss.pretraining import backbone as weights
from wsss.training import trainer
from wsss.training.runtime import place, resolve_device, seed_everything, training_loader

# The collapse check's threshold on the spread of the held images' L2-normalised embeddings (the
# root mean square distance from their mean direction, sqrt(1 - mean pairwise cosine) for many
# images): 0.05 is a mean cosine similarity above 0.9975, every image mapped nearly alike.
COLLAPSE_SPREAD = 0.05


def augmentation(size: int) -> T.Compose:
    """SimCLR's view: random resized crop (20-100% of the area), flip, colour jitter (p 0.8),
    greyscale (p 0.2), Gaussian blur (p 0.5); uint8-range float tensor out."""
    kernel = max(3, (size // 10) | 1)   # odd, ~10% of the side, as SimCLR's
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.PILToTensor(),
    ])


def centre_view(size: int) -> T.Compose:
    return T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.PILToTensor()])


class TwoViews(Dataset):
    """Two augmented views of each image (images only: masks and tags are never read)."""

    def __init__(self, root, ids: list[str], size: int):
        self.root, self.ids, self.view = root, ids, augmentation(size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image = Image.fromarray(voc.load_image(self.root, self.ids[i]))
        return self.view(image).float(), self.view(image).float()


class SimCLR(nn.Module):
    """A backbone, global average pooling and a projection MLP (Linear-BN-ReLU-Linear)."""

    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden: int = 512):
        super().__init__()
        self.backbone = backbone
        channels = backbone.out_channels
        self.projector = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, projection_dim))
        self.mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(backbone.std).view(1, 3, 1, 1)

    def new_modules(self) -> list[nn.Module]:
        return [self.projector]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """N x C: the backbone's pooled feature of images in 0..255 (what transfers)."""
        x = (images / 255.0 - self.mean.to(images.device)) / self.std.to(images.device)
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.embed(images))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy: view k of z1 must pick view k of z2
    (and back) among all 2N - 1 other views, by cosine similarity / temperature."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def batch_loss(temperature: float):
    def loss(model, batch):
        v1, v2 = batch
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)   # one pass: BatchNorm sees both views
        return nt_xent(z1, z2, temperature)
    return loss


def spread(embeddings: torch.Tensor) -> dict:
    """The collapse check on N x D embeddings, L2-normalised: `embedding_std`, the per-dimension
    std (mean over the dimensions; 0 when every image maps to one vector), and `embedding_spread`,
    the root of the summed per-dimension variances, which is the RMS distance of the embeddings
    from their mean direction (0 collapsed, ~1 for directions spread over the sphere); it does not
    shrink with the dimension, so one threshold (COLLAPSE_SPREAD) fits every backbone."""
    e = F.normalize(embeddings.float(), dim=1)
    var = e.var(dim=0) if len(e) > 1 else torch.zeros(e.shape[1])
    total = float(var.sum().sqrt())
    return {"embedding_std": round(float(var.sqrt().mean()), 6), "embedding_spread": round(total, 4),
            "collapsed": total < COLLAPSE_SPREAD}


def warn_if_collapsed(check: dict) -> None:
    if check["collapsed"]:
        message = (f"pretrain: the embedding looks collapsed: per-dimension std {check['embedding_std']}, spread "
                   f"{check['embedding_spread']} (threshold {COLLAPSE_SPREAD}): the backbone maps every held image "
                   f"nearly alike. Lower pretrain.lr, raise pretrain.temperature or the batch size, or train longer "
                   f"(a short run from scratch has not settled its batch-norm statistics), and rerun before "
                   f"starting anything from it")
        warnings.warn(message, stacklevel=2)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def held_embeddings(model: SimCLR, root, ids: list[str], size: int, device) -> torch.Tensor:
    model.eval()
    view = centre_view(size)
    out = [model.embed(place(view(Image.fromarray(voc.load_image(root, i))).float()[None], device)) for i in ids]
    return torch.cat(out).cpu()


@torch.no_grad()
def held_loss(model: SimCLR, root, ids: list[str], size: int, temperature: float, device, seed: int) -> float:
    """NT-Xent of two augmented views of the held images (eval mode, fixed draws)."""
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        views = TwoViews(root, ids, size)
        pairs = [views[i] for i in range(len(ids))]
    v1 = place(torch.stack([a for a, _ in pairs]), device)
    v2 = place(torch.stack([b for _, b in pairs]), device)
    return float(nt_xent(model(v1), model(v2), temperature))


def trainer_config(cfg: dict) -> dict:
    """The shared training loop's settings for the pretrain section: every layer trains (BatchNorm
    too: the statistics of the dataset's images are part of what is learned), AdamW, poly decay; from
    ImageNet the new projection head learns 10x faster than the pretrained backbone, as the
    classifier's new layers do (from scratch every layer is new: one rate)."""
    mult = 10.0 if cfg["start"] == "imagenet" else 1.0
    return {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "weight_decay": cfg["weight_decay"],
            "optimizer": "adamw", "lr_schedule": "poly", "lr_step_epochs": [], "new_layer_lr_mult": mult,
            "momentum": 0.9, "freeze_bn": False, "freeze_blocks": 0, "precision": cfg["precision"], "ema_decay": 0.0,
            "seed": cfg["seed"], "device": cfg["device"], "num_workers": cfg["num_workers"]}


def split_held(ids: list[str], held: int, seed: int) -> tuple[list[str], list[str]]:
    """(training ids, held ids): `held` images (at most a fifth of them, at least 2) drawn with the seed."""
    n_held = max(2, min(held, len(ids) // 5))
    if len(ids) - n_held < 2:
        raise ValueError(f"pretrain: {len(ids)} images are too few to pretrain on (and hold {n_held} out)")
    order = np.random.default_rng(seed).permutation(len(ids))
    held_set = set(order[:n_held].tolist())
    return [i for k, i in enumerate(ids) if k not in held_set], [i for k, i in enumerate(ids) if k in held_set]


def pretrain(cfg: dict, ids: list[str], root, out: str | Path) -> tuple[dict, list[dict]]:
    """Train a backbone with SimCLR on the images `ids` (minus the held ones), save it to `out`
    (wsss/pretraining/backbone.py); returns (metrics, per-epoch history)."""
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    train_ids, held_ids = split_held(ids, cfg["held"], cfg["seed"])
    backbone = build_backbone(cfg["backbone"], pretrained=cfg["start"] == "imagenet", output_stride=cfg["output_stride"])
    model = SimCLR(backbone, cfg["projection_dim"])
    tcfg = trainer_config(cfg)
    loader = training_loader(TwoViews(root, train_ids, cfg["image_size"]), tcfg)
    start = time.perf_counter()
    history = trainer.fit(model, loader, tcfg, device, batch_loss(cfg["temperature"]), "pretrain (SimCLR)")
    seconds = time.perf_counter() - start
    check = spread(held_embeddings(model, root, held_ids, cfg["image_size"], device))
    warn_if_collapsed(check)
    weights.save(out, model.backbone, {"backbone": cfg["backbone"], "method": "simclr", "start": cfg["start"],
                                       "epochs": cfg["epochs"], "image_size": cfg["image_size"]})
    metrics = {"enabled": True, "method": "simclr", "start": cfg["start"], "backbone": cfg["backbone"],
               "epochs": cfg["epochs"], "n_train": len(train_ids), "n_held": len(held_ids),
               "batch_size": loader.batch_size, "train_seconds": round(seconds, 1),
               "first_loss": round(history[0]["loss"], 5), "final_loss": round(history[-1]["loss"], 5),
               "chance_loss": round(math.log(2 * loader.batch_size - 1), 5),   # NT-Xent of a collapsed embedding
               "held_loss": round(held_loss(model, root, held_ids, cfg["image_size"], cfg["temperature"], device,
                                            cfg["seed"]), 5),
               "device": str(device), **check}
    return metrics, history
