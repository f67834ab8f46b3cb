"""Checkpoints of every network: weights plus the config that rebuilds them (models/networks.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models.networks import from_config, normalise
from stores.atomic import atomic_path
from training.runtime import place, resolve_device


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


_LOADED: dict = {}   # this process's network of a CheckpointRef: (path, mtime, device) -> (model, config, device)


@dataclass
class CheckpointRef:
    """The network a chunk of a scaled-out stage runs (scaleout/): the one the driver already holds
    (engine local), or loaded from `path` once per worker process (dask: only the path and the
    device setting travel; `held` is dropped when pickled)."""

    path: str
    device: str   # the params' setting (auto | cpu | cuda[:N]), resolved where the chunk runs
    held: tuple | None = None   # (model, config, torch.device)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "held": None}

    def get(self) -> tuple[torch.nn.Module, dict, torch.device]:
        if self.held is None:
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"checkpoint {self.path} not found: run the stage that makes it first")
            key = (self.path, os.stat(self.path).st_mtime_ns, self.device)
            if key not in _LOADED:
                _LOADED.clear()   # one network per worker process at a time
                device = resolve_device(self.device)
                _LOADED[key] = (*load(self.path, device), device)
            self.held = _LOADED[key]
        return self.held

    def config(self) -> dict:
        return self.held[1] if self.held else read(self.path)["config"]
