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

DEFAULT_API = "http://127.0.0.1:4200/api"
GPU_SLOTS = 1  # one GPU: training/export tasks queue instead of competing for its memory


def ensure_gpu_limit(slots: int = GPU_SLOTS) -> None:
    """The tag concurrency limit on `gpu` tasks (created, or reset to `slots`)."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import GPU_TAG

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


def deployments(repo: Path):
    from flows.pipeline import STAGE_FLOWS, pipeline

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
    # Serve to the `make server` API unless PREFECT_API_URL names another (settings are read at
    # import, so this must precede importing prefect).
    os.environ.setdefault("PREFECT_API_URL", DEFAULT_API)
    from prefect import serve

    print(f"serving to {os.environ['PREFECT_API_URL']} from {repo}", flush=True)
    ensure_gpu_limit(args.gpu_slots)
    serve(*deployments(repo))
    return 0
