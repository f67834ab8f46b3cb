"""Prefect flows: the whole pipeline, and one flow per dvc.yaml stage.

Each stage task runs the stage through DVC in the repository the flow runs in (the serving
process's working directory): `dvc repro STAGE`, or `dvc exp run -S key=value ... STAGE` when the
run overrides parameters, so dvc.lock records every run and unchanged stages are skipped. The
stage's output streams into the Prefect log. Stages that may use the GPU carry the `gpu` tag,
which `python -m flows serve` limits to one concurrent task run.

The flow opens an MLflow parent run and passes its id to the stage processes; each stage run
becomes a child run (wsss/tracking/runs.py). When the run changed the pseudo labels, it leaves a
version: a git commit + tag of dvc.lock/params.yaml/metrics and a `dvc push` (wsss/commands/versions.py).
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows import dvc_commands
from wsss.commands import versions
from wsss.commands.gitdvc import tool_env
from wsss.config import project
from flows.stream import run_logged
from wsss.tracking import lineage
from wsss.tracking import runs as tracking

GPU_TAG = "gpu"
REPO_ROOT = project.root()  # where dvc.yaml is read to define the flows


class StageFailed(RuntimeError):
    """A stage's DVC command failed; the message ends with the last lines of its output."""


class TransientStageFailure(StageFailed):
    """A failure another try may not repeat (repo lock held, database busy, network)."""


def _retry_transient(task_, task_run, state) -> bool:
    exc = getattr(state, "data", None)
    return isinstance(exc, TransientStageFailure) or "TransientStageFailure" in (state.message or "")


@task(name="dvc-stage", retries=2, retry_delay_seconds=15, retry_condition_fn=_retry_transient)
def dvc_stage(stage: str, overrides: dict[str, Any], parent_run_id: Optional[str]) -> dict:
    logger = get_run_logger()
    args = dvc_commands.stage_command(stage, overrides)
    logger.info("dvc %s", " ".join(args))
    env = tool_env({tracking.PARENT_ENV: parent_run_id} if parent_run_id else {})
    start = time.perf_counter()
    rc, tail = run_logged([sys.executable, "-m", "dvc", *args], Path.cwd(), logger.info, env)
    seconds = round(time.perf_counter() - start, 1)
    if rc != 0:
        kind = TransientStageFailure if dvc_commands.is_transient(tail) else StageFailed
        raise kind(f"dvc {' '.join(args)} exited with {rc}:\n" + "\n".join(tail.splitlines()[-30:]))
    ran = re.findall(r"Running stage '([^']+)'", tail)
    return {"stage": stage, "ran": ran, "seconds": seconds}


@task(name="record-label-version")
def record_version() -> Optional[str]:
    logger = get_run_logger()
    try:
        version = versions.record(Path.cwd(), log=logger.info)
    except versions.VersionError as exc:  # no label output declared yet: nothing to version
        logger.info("not versioning pseudo labels: %s", exc)
        return None
    return version.name if version else None


DrsMode = Literal["none", "fixed", "learnable"]


def run_pipeline(stages: Optional[list[str]], data_root: Optional[str], drs_mode: Optional[str],
                 drs_delta: Optional[float], epochs: Optional[int], overrides: Optional[dict[str, Any]],
                 dask_address: Optional[str] = None) -> dict:
    """The body every flow shares: check the request, then one DVC task per stage, in order."""
    logger = get_run_logger()
    repo = Path.cwd()
    available = dvc_commands.pipeline_stages(repo)
    selected = dvc_commands.select_stages(stages, available)
    wanted = dvc_commands.collect_overrides(
        {"data_root": data_root, "drs_mode": drs_mode, "drs_delta": drs_delta, "epochs": epochs,
         "dask_address": dask_address}, overrides)
    params = dvc_commands.check_overrides(repo / "params.yaml", wanted)  # bad input fails here, by key
    gpu = dvc_commands.gpu_stages(lineage.read_yaml(repo / "dvc.yaml"), params)
    logger.info("stages %s; overrides %s; gpu-tagged %s", selected, wanted or "none", sorted(gpu & set(selected)))

    parent = tracking.start_parent(f"pipeline {flow_run.get_name() or ''}".strip(), {
        "prefect.flow_run_id": str(flow_run.get_id() or ""), "prefect.flow": str(flow_run.get_flow_name() or ""),
        "stages": ",".join(selected), "overrides": str(wanted)})
    results, ok = [], False
    try:
        for stage in selected:
            tags = {GPU_TAG} if stage in gpu else set()
            results.append(dvc_stage.with_options(name=f"stage-{stage}", tags=tags)(stage, wanted, parent))
        version = record_version()
        ok = True
    finally:
        tracking.end_parent(parent, ok)
    return {"stages": results, "label_version": version, "mlflow_parent_run_id": parent}


@flow(name="pipeline", log_prints=True)
def pipeline(stages: Optional[list[str]] = None, data_root: Optional[str] = None,
             drs_mode: Optional[DrsMode] = None, drs_delta: Optional[float] = None,
             epochs: Optional[int] = None, overrides: Optional[dict[str, Any]] = None,
             dask_address: Optional[str] = None) -> dict:
    """The DVC pipeline. stages: dvc.yaml stage names (empty = all); data_root: data.root;
    drs_mode/drs_delta: classifier.drs.*; epochs: classifier.epochs; overrides: any other
    params.yaml keys, dotted (e.g. {"maps.flip": false}); dask_address: run the per-image stages
    on this Dask scheduler (tcp://host:8786), or `local` for a LocalCluster here (scaleout.*).
    Unset fields keep params.yaml."""
    return run_pipeline(stages, data_root, drs_mode, drs_delta, epochs, overrides, dask_address)


def _stage_flow(stage: str):
    def one_stage(data_root: Optional[str] = None, drs_mode: Optional[DrsMode] = None,
                  drs_delta: Optional[float] = None, epochs: Optional[int] = None,
                  overrides: Optional[dict[str, Any]] = None, dask_address: Optional[str] = None) -> dict:
        return run_pipeline([stage], data_root, drs_mode, drs_delta, epochs, overrides, dask_address)

    one_stage.__doc__ = (f"`dvc repro {stage}` (and whatever upstream is stale). Unset fields keep "
                         "params.yaml; overrides: other dotted params.yaml keys; dask_address: a Dask "
                         "scheduler (tcp://host:8786) or `local` for the per-image stages.")
    one_stage.__name__ = one_stage.__qualname__ = f"stage_{stage}"
    return flow(name=f"stage-{stage}", log_prints=True)(one_stage)


# One module-level flow per dvc.yaml stage, so deployments can name them as entrypoints
# (flows/pipeline.py:stage_<name>); the list follows dvc.yaml, never a copy of it.
STAGE_FLOWS = {name: _stage_flow(name) for name in dvc_commands.pipeline_stages(REPO_ROOT)}
globals().update({f"stage_{name}": f for name, f in STAGE_FLOWS.items()})
