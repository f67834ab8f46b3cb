"""Checkpoints of every network: weights plus the config that rebuilds them (models/networks.py)."""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from wsss.config.errors import StageError
from models.networks import from_config, normalise
from wsss.stores.atomic import atomic_path
from wsss.training.runtime import place, resolve_device


def save(path: str | Path, model: torch.nn.Module, config: dict) -> None:
    """config: models.networks.to_config(...); written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)


class CheckpointError(StageError, ValueError):
    """A file that is not a checkpoint of the kind asked for; the message names it."""

    kind = "checkpoint error"


def _wanted(kinds: tuple[str, ...]) -> str:
    return f"a {kinds[0]} checkpoint (kind {' or '.join(kinds)})" if kinds else "a network checkpoint"


def read(path: str | Path, kinds: tuple[str, ...] = ()) -> dict:
    """{"state_dict", "config"} on the CPU; the config in today's shape. kinds: the network kinds
    accepted (models/networks.py; empty: any); anything else raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: run the stage that makes it first")
    try:   # what torch raises for a file that is not its zip archive of tensors
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not readable as a checkpoint ({why}); expected {_wanted(kinds)} "
                              "saved by this project") from None
    if not (isinstance(ckpt, dict) and all(isinstance(ckpt.get(k), dict) for k in ("state_dict", "config"))):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: a torch file, but not {_wanted(kinds)} of this project "
                              f"(expected keys config and state_dict, found {found})")
    try:
        config = normalise(ckpt["config"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}; expected {_wanted(kinds)}") from None
    if kinds and config.get("kind") not in kinds:
        raise CheckpointError(f"{path}: a {config.get('kind')} checkpoint; expected {_wanted(kinds)}")
    return {**ckpt, "config": config}


def load(path: str | Path, device: torch.device, kinds: tuple[str, ...] = ()) -> tuple[torch.nn.Module, dict]:
    """(the network in eval mode on `device`, its config: kind, network section, classes)."""
    ckpt = read(path, kinds)
    try:
        model = from_config(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:   # config or weights that do not fit
        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its weights do not fit the network its config describes ({why}); "
                              f"expected {_wanted(kinds)} saved by this project") from None
    return place(model.eval(), device), ckpt["config"]


_LOADED: dict = {}   # this process's network of a CheckpointRef: (path, mtime, device) -> (model, config, device)


@dataclass
class CheckpointRef:
    """The network a chunk of a scaled-out stage runs (wsss/scaleout/): the one the driver already holds
    (engine local), or loaded from `path` once per worker process (dask: only the path and the
    device setting travel; `held` is dropped when pickled)."""

    path: str
    device: str   # the params' setting (auto | cpu | cuda[:N]), resolved where the chunk runs
    held: tuple | None = None   # (model, config, torch.device)
    kinds: tuple[str, ...] = ()   # the network kinds accepted (empty: any)

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
                _LOADED[key] = (*load(self.path, device, self.kinds), device)
            self.held = _LOADED[key]
        return self.held

    def config(self) -> dict:
        return self.held[1] if self.held else read(self.path, self.kinds)["config"]
