"""The pretrain stage's output, artifacts/pretrain/backbone.pt: a backbone's weights and what made
them. Networks that start from it (classifier.init: pretrain) load it with `load_into`."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wsss.config.errors import StageError
from models.drs import LearnableDRS
from wsss.stores.atomic import atomic_path


class PretrainError(StageError):
    kind = "params error"


def save(path: str | Path, backbone: nn.Module, meta: dict) -> None:
    """The backbone's state dict with meta (backbone name, method, start, ...), written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": backbone.state_dict(), **meta}, tmp)


def read(path: str | Path, key: str) -> dict:
    """The saved weights; PretrainError naming `key` (the setting that asked for them) when the
    pretrain stage did not make them."""
    path = Path(path)
    if not path.is_file():
        note = path.parent / "NOTE.txt"
        why = (f" ({note.read_text().strip()})" if note.is_file() else
               " (run the pretrain stage first: python -m tasks pretrain)")
        raise PretrainError(f"{key}: pretrain needs the self-supervised backbone {path}, which the pretrain stage "
                            f"writes only with pretrain.enabled: true{why}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_into(backbone: nn.Module, name: str, path: str | Path, key: str) -> dict:
    """Copy the pretrained weights into `backbone` (named `name` in params); returns the file's meta.
    Every key of the file must fit; the only weights it may lack are learnable DRS controllers,
    which the pretraining network has no place for (they keep their fresh initialisation)."""
    saved = read(path, key)
    if saved["backbone"] != name:
        raise PretrainError(f"{key}: {path} holds a {saved['backbone']} backbone, this network's is {name}: "
                            f"set pretrain.backbone: {name} and rerun the pretrain stage")
    state, own = saved["state_dict"], backbone.state_dict()
    drs = tuple(f"{n}." for n, m in backbone.named_modules() if isinstance(m, LearnableDRS))
    extra = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.startswith(drs))
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if extra or missing or wrong:
        raise PretrainError(f"{key}: {path} does not fit this {name} (unknown {extra[:3]}, missing {missing[:3]}, "
                            f"other shape {wrong[:3]})")
    backbone.load_state_dict(state, strict=False)
    return {k: v for k, v in saved.items() if k != "state_dict"}
