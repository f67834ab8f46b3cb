"""Device choice, seeding and checkpoints: what every training stage shares."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from tasks.io import atomic_path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (use device: auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict) -> None:
    """state_dict plus the plain-typed config that rebuilds the model; written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: run the stage that makes it first")
    return torch.load(path, map_location="cpu", weights_only=True)


def scheduled_lr(base: float, cfg: dict, step: int, total: int, epoch: int) -> float:
    """The classifier's schedule: polynomial decay per step, or x0.1 at each milestone epoch."""
    if cfg["lr_schedule"] == "step":
        return base * 0.1 ** sum(epoch >= e for e in cfg["lr_step_epochs"])
    return base * (1 - step / max(total, 1)) ** 0.9
