"""Experiment tracking for the stages: the interface every stage calls, backed by MLflow.

`run_stage` wraps each stage in `stage_run`; inside it, stages call `log_metrics` (per-epoch
curves and final figures) and `log_artifact` (images, charts). Outside a stage run these are
no-ops, so the pure cores never depend on a tracking server.

One MLflow run per stage run, grouped under one parent run per pipeline run:
- a Prefect flow creates the parent and hands its id to the stage processes in
  WSSS_MLFLOW_PARENT_RUN_ID (the flow sets the parent's status when it ends);
- without that variable, a stage run under `dvc repro` / `dvc exp run` (`make run`) finds the
  nearest `dvc` process above it and groups by `<host>:<dvc pid>:<dvc start time>` (tag
  wsss.group): the first stage of that dvc command creates the parent (run name
  "pipeline (dvc repro)"), later ones find it by the tag. Each stage end sets the parent's status
  and end time (FINISHED, or FAILED for good once a stage failed); a stage start sets RUNNING.
  Stages DVC skips as unchanged leave no child; a dvc command that runs none leaves no parent.
- `python -m tasks STAGE` outside DVC and Prefect stays a top-level run.
A killed process never ends its run, so every run records `<host>:<pid>:<start time>` of the
process it lives in (tag wsss.process; a dvc group's parent: the dvc command's), and each stage or
flow start sets the RUNNING runs of this store whose process on this host is gone to KILLED.
The store is SQLite (`mlflow.db` in the working directory, i.e. the repository root) unless
MLFLOW_TRACKING_URI says otherwise.

Tracking never breaks a stage: any MLflow failure becomes one warning on stderr, and the stage
goes on untracked. mlflow is imported only when a stage run starts (it costs ~1 s).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

PARENT_ENV = "WSSS_MLFLOW_PARENT_RUN_ID"
GROUP_TAG = "wsss.group"                # on a parent run made for one `dvc` command
PROCESS_TAG = "wsss.process"            # <host>:<pid>:<start time> of the process the run lives in
DISABLE_ENV = "WSSS_TRACKING"          # "off" disables tracking (unit tests of stage cores)
EXPERIMENT = "wsss-drs"
_MAX_PARAM = 6000                       # MLflow's limit on a param value

_run = None  # the active _StageRun, or None


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def _warn(what: str, exc: BaseException) -> None:
    print(f"warning: MLflow tracking {what} failed, continuing without it: {type(exc).__name__}: {exc}",
          file=sys.stderr, flush=True)


def client():
    """An MlflowClient on the project store (telemetry off before mlflow is imported)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    with _first_opening(uri) as first:
        mlflow_client = MlflowClient(uri)
        if first:
            mlflow_client.search_experiments(max_results=1)   # the store exists, migrated, past this line
    return mlflow_client


_opened: set[str] = set()   # SQLite stores this process has opened once under the lock


@contextlib.contextmanager
def _first_opening(uri: str):
    """Processes that open a fresh SQLite store at once (benchmark rows side by side, parallel dvc
    stages) each create and migrate its tables, and all but one fail ("table experiments already
    exists") and go on untracked. So a process opens a SQLite store the first time under an
    exclusive lock on `<db>.lock`."""
    if not uri.startswith("sqlite:///") or uri in _opened:
        yield False
        return
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    with FileLock(db.with_name(db.name + ".lock")):   # an OS lock: a killed holder releases it
        yield True
    _opened.add(uri)


# MLflow 3's UI opens an experiment of this kind on its runs (not on the GenAI traces view).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(mlflow_client) -> str:
    """The project experiment, created with artifacts in ./mlartifacts (git-ignored) if new, and
    tagged with EXPERIMENT_KIND (an older one gets the tag when opened)."""
    name = experiment_name()
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=Path("mlartifacts").resolve().as_uri(),
                                                   tags=dict([EXPERIMENT_KIND]))
        except Exception:  # another stage process created it first
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        mlflow_client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())


def process_key(pid: int | None = None) -> str:
    """`<host>:<pid>:<start time>` of a process (default: this one): a reused pid reads differently."""
    import psutil

    proc = psutil.Process(pid)
    return f"{host_name()}:{proc.pid}:{proc.create_time():.2f}"


def _gone(key: str) -> bool:
    """Whether the process a PROCESS_TAG value names, on this host, no longer runs."""
    import psutil

    host, pid, started = key.rsplit(":", 2)
    try:
        return host == host_name() and abs(psutil.Process(int(pid)).create_time() - float(started)) > 1.0
    except psutil.NoSuchProcess:   # zombies included
        return host == host_name()
    except (psutil.Error, ValueError):   # not ours to judge
        return False


def mark_dead_runs_killed(mlflow_client, exp: str) -> list[str]:
    """Set RUNNING runs of experiment `exp` whose process on this host is gone to KILLED; their ids."""
    query = f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` LIKE '{host_name()}:%'"
    killed = []
    for run in mlflow_client.search_runs([exp], filter_string=query, max_results=1000):
        if _gone(run.data.tags[PROCESS_TAG]):
            mlflow_client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


def start_parent(name: str, tags: dict | None = None) -> str | None:
    """A parent run for one pipeline/flow run; returns its id, or None if MLflow failed."""
    try:
        c = client()
        exp = experiment_id(c)
        _guard("marking runs of dead processes KILLED", mark_dead_runs_killed, c, exp)
        run = c.create_run(exp, run_name=name, tags={"kind": "pipeline", PROCESS_TAG: process_key(), **(tags or {})})
        return run.info.run_id
    except Exception as exc:
        _warn("start of the parent run", exc)
        return None


def end_parent(run_id: str | None, ok: bool, metrics: dict | None = None) -> None:
    if not run_id:
        return
    try:
        c = client()
        for key, value in (metrics or {}).items():
            c.log_metric(run_id, key, float(value))
        c.set_terminated(run_id, "FINISHED" if ok else "FAILED")
    except Exception as exc:
        _warn("end of the parent run", exc)


def _dvc_args(cmdline: list[str]) -> list[str] | None:
    """The arguments after `dvc` if this command line runs DVC (`dvc ...`, a `#!python` script
    named dvc, `python -m dvc ...`), else None."""
    names = [os.path.basename(a).lower() for a in cmdline[:2]]
    if names and names[0] in ("dvc", "dvc.exe"):
        return cmdline[1:]
    if len(names) == 2 and names[0].startswith("python"):
        if names[1] in ("dvc", "dvc.exe", "dvc-script.py"):
            return cmdline[2:]
        if cmdline[1:3] == ["-m", "dvc"]:
            return cmdline[3:]
    return None


def _ancestors():
    """(pid, start time in s since the epoch, command line) of each process above this one, nearest
    first. psutil is there wherever a stage runs under DVC: DVC itself requires it."""
    import psutil

    for proc in psutil.Process().parents():
        try:
            yield proc.pid, proc.create_time(), proc.cmdline()
        except psutil.Error:
            continue


def dvc_ancestor() -> dict | None:
    """The nearest `dvc` process this process runs under (a stage under `dvc repro` runs in a shell
    under it): {"group": "<host>:<pid>:<start time>", "command": "dvc repro ..."}, or None."""
    for pid, started, cmdline in _ancestors():
        args = _dvc_args(cmdline)
        if args is not None:
            return {"group": f"{host_name()}:{pid}:{started:.2f}", "command": " ".join(["dvc", *args])}
    return None


def _pipeline_name(command: str) -> str:
    words = command.split()
    sub = " ".join(words[1:3]) if words[1:2] == ["exp"] else " ".join(words[1:2])
    return f"pipeline ({' '.join(['dvc', sub]).strip()})"


def group_parent(mlflow_client, exp: str, ancestor: dict, tags: dict | None = None) -> str:
    """The parent run of the stage runs under one dvc command: found by its wsss.group tag, or
    created by the first stage. Should two stages create it at once, the earliest one stays."""
    query = f"tags.`{GROUP_TAG}` = '{ancestor['group']}'"

    def existing():
        runs = mlflow_client.search_runs([exp], filter_string=query, max_results=50)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = existing()
    if found:
        return found[0].info.run_id
    mine = mlflow_client.create_run(exp, run_name=_pipeline_name(ancestor["command"]), tags={
        "kind": "pipeline", GROUP_TAG: ancestor["group"], PROCESS_TAG: ancestor["group"],
        "dvc.command": ancestor["command"][:5000],
        **(tags or {})}).info.run_id
    winner = (existing() or [None])[0]
    if winner is not None and winner.info.run_id != mine:
        mlflow_client.delete_run(mine)
        return winner.info.run_id
    return mine


class _StageRun:
    def __init__(self, stage: str, params: dict):
        from mlflow.entities import Param

        from wsss.tracking import lineage

        self.stage = stage
        self.client = client()
        parent = os.environ.get(PARENT_ENV)
        spec, lock = {}, {}
        try:
            spec = lineage.stage_spec(lineage.read_yaml("dvc.yaml"), stage, params)
            lock = lineage.read_yaml("dvc.lock") if Path("dvc.lock").is_file() else {}
        except lineage.LineageError:
            pass  # a stage run outside the DVC pipeline: no lineage to record
        self.spec = spec
        tags = {"stage": stage, PROCESS_TAG: process_key()}
        commit = lineage.git_commit()
        if commit:
            tags["git.commit"], tags["git.dirty"] = commit[0], str(commit[1]).lower()
        for dep, md5 in lineage.dep_hashes(spec, params, lock).items():
            tags[f"dvc.dep.{dep}"] = md5
        self.group_parent = None  # the parent this stage run keeps the status of (dvc grouping)
        exp = self.client.get_run(parent).info.experiment_id if parent else experiment_id(self.client)
        _guard("marking runs of dead processes KILLED", mark_dead_runs_killed, self.client, exp)
        if not parent:
            try:
                ancestor = dvc_ancestor()
                if ancestor is not None:
                    git = {k: v for k, v in tags.items() if k.startswith("git.")}
                    parent = self.group_parent = group_parent(self.client, exp, ancestor, git)
                    if self.client.get_run(parent).info.status != "FAILED":
                        self.client.update_run(parent, "RUNNING")
            except Exception as exc:
                _warn(f"grouping stage {stage!r} under its dvc command's parent run", exc)
                parent = self.group_parent = None
        if parent:
            tags["mlflow.parentRunId"] = parent
        self.run_id = self.client.create_run(exp, run_name=stage, tags=tags).info.run_id
        keys = lineage.stage_param_keys(spec) if spec else list(params)
        flat = lineage.select(params, keys)
        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                 for k, v in flat.items()]
        items = [Param(p.key, p.value[:_MAX_PARAM]) for p in items]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict, step: int | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, str(key), str(value))

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_outputs(self) -> None:
        """The stage's metrics files and plots as artifacts, with charts drawn from them."""
        from wsss.tracking import charts
        from wsss.tracking import lineage

        for path in map(Path, lineage.stage_outputs(self.spec, "plots")):
            if path.is_file():
                self.log_artifact(path, "plots")
        for path in map(Path, lineage.stage_outputs(self.spec, "metrics")):
            if not path.is_file():
                continue
            self.log_artifact(path, "metrics")
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                # each chart on its own: one that cannot be drawn costs only itself
                if isinstance(data.get("per_class_iou"), dict) and data["per_class_iou"]:
                    _guard(f"per-class IoU chart of {path.name}", lambda: self.log_artifact(charts.per_class_iou_chart(
                        data["per_class_iou"], Path(tmp) / f"{path.stem}_per_class_iou.png",
                        f"{self.stage}: per-class IoU ({path.name})"), "charts"))
                if data.get("confusion_matrix"):
                    _guard(f"confusion matrix chart of {path.name}", lambda: self.log_artifact(charts.confusion_matrix_chart(
                        data["confusion_matrix"], data.get("classes"), Path(tmp) / f"{path.stem}_confusion_matrix.png",
                        f"{self.stage}: confusion matrix ({path.name})"), "charts"))

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")

    def finish_parent(self, ok: bool) -> None:
        """The dvc group's parent ends with this stage, for now: FAILED once any stage failed."""
        if self.group_parent:
            failed = not ok or self.client.get_run(self.group_parent).info.status == "FAILED"
            self.client.set_terminated(self.group_parent, "FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def stage_run(stage: str, params: dict):
    global _run
    _run = None
    # under torchrun only rank 0 tracks (its other ranks only train: wsss/training/distributed.py)
    if os.environ.get(DISABLE_ENV, "").lower() != "off" and os.environ.get("RANK", "0") == "0":
        try:
            _run = _StageRun(stage, params)
        except Exception as exc:
            _warn(f"start of stage {stage!r}", exc)
    ok = False
    try:
        yield
        ok = True
    finally:
        run, _run = _run, None
        if run is not None:
            if ok:
                _guard("logging stage outputs", run.log_outputs)
            _guard("end of the stage run", run.finish, ok)
            _guard("update of the pipeline's parent run", run.finish_parent, ok)


def _guard(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:
        _warn(what, exc)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if _run is not None:
        _guard("log_metrics", _run.log_metrics, metrics, step)


def set_tags(tags: dict) -> None:
    """Tags on the stage's run, e.g. {"supervision": "semi"}: what kind of result it is, searchable
    in the MLflow UI (tags.supervision = 'semi'). A no-op outside a stage run."""
    if _run is not None:
        _guard("set_tags", _run.set_tags, tags)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if _run is not None:
        _guard(f"log_artifact({path})", _run.log_artifact, Path(path), artifact_path)
