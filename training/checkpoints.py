"""Checkpoints of every network: weights plus the config that rebuilds them (models/networks.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from models.networks import from_config, normalise
from stores.atomic import atomic_path
from training.runtime import place


def save(path: str | Path, model: torch.nn.Module, config: dict) -> None:
    """config: models.networks.to_config(...); written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)


def read(path: str | Path) -> dict:
    """{"state_dict", "config"} on the CPU; the config in today's shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: run the stage that makes it first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {**ckpt, "config": normalise(ckpt["config"])}


def load(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """(the network in eval mode on `device`, its config: kind, network section, classes)."""
    ckpt = read(path)
    model = from_config(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return place(model.eval(), device), ckpt["config"]
