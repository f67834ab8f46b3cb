"""Experiment tracking for the stages: the interface every stage calls.

`run_stage` wraps each stage in `stage_run`; inside it, stages call `log_metrics` (per-epoch
curves and final figures) and `log_artifact` (images, charts). Outside a stage run these are
no-ops, so the pure cores never depend on a tracking server.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

_active = False


@contextlib.contextmanager
def stage_run(stage: str, params: dict):
    global _active
    _active = True
    try:
        yield
    finally:
        _active = False


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if not _active:
        return


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if not _active:
        return
