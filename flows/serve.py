"""Serve the pipeline flow and one flow per stage to a Prefect server, with their parameter forms.

    prefect server start --host 127.0.0.1        # or: make server
    python -m flows serve                        # or: make serve (from the repository root)

Runs start from the UI (Deployments -> pipeline -> Run -> Custom run) or the API, and execute in
this process's working directory, which must be the repository (dvc.yaml, params.yaml).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.pipeline import GPU_TAG, STAGE_FLOWS, pipeline

GPU_SLOTS = 1  # one GPU: training/export tasks queue instead of competing for its memory


def ensure_gpu_limit(slots: int = GPU_SLOTS) -> None:
    """The tag concurrency limit on `gpu` tasks (created, or reset to `slots`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


def deployments(repo: Path):
    desc = f"Runs in {repo}"
    yield pipeline.to_deployment(name="pipeline", description=f"All dvc.yaml stages through DVC. {desc}",
                                 tags=["wsss"])
    for name, f in STAGE_FLOWS.items():
        yield f.to_deployment(name=name, description=f"dvc repro {name}. {desc}", tags=["wsss", "stage"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-slots", type=int, default=GPU_SLOTS)
    args = parser.parse_args(argv)
    repo = Path.cwd()
    if not (repo / "dvc.yaml").is_file():
        print(f"error: no dvc.yaml in {repo}: run from the repository root", file=sys.stderr)
        return 2
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set (prefect.toml sets http://127.0.0.1:4200/api)", file=sys.stderr)
        return 2
    ensure_gpu_limit(args.gpu_slots)
    serve(*deployments(repo))
    return 0
