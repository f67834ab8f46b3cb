"""Reading the project's YAML files (params.yaml, profiles, dvc.yaml, dvc.lock)."""
from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml(path: str | Path, error: type[Exception] = ValueError):
    """Parsed YAML; a missing or malformed file raises `error` naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
