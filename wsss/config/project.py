"""The pipeline folder: where dvc.yaml, params.yaml and profiles/ are read, and the stages write.

It is the current folder or the nearest one above it with a dvc.yaml (as git and dvc find their
repository), else the source checkout this package runs from (an editable install), else the
current folder.
"""
from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]   # the checkout, when the package runs from one


def find(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the current folder) holding a dvc.yaml."""
    here = Path(start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file()), None)


def root(start: str | Path | None = None) -> Path:
    found = find(start)
    if found is not None:
        return found
    if (SOURCE / "dvc.yaml").is_file():
        return SOURCE
    return Path(start or Path.cwd()).resolve()
