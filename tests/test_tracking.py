"""MLflow tracking of stage runs: parent/child runs, params by dvc.yaml section, lineage tags,
metrics, charts; and a broken store never breaks a stage."""
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wsss.tracking import lineage
from wsss.tracking import runs as tracking

DVC_YAML = {
    "stages": {
        "toy": {
            "cmd": "python -m tasks toy",
            "deps": ["src.txt", "${data.root}"],
            "params": ["data.root", "toy"],
            "outs": ["out.bin"],
            "metrics": [{"metrics/toy.json": {"cache": False}}],
            "plots": [{"plots/toy.csv": {"cache": False, "x": "epoch", "y": "loss"}}],
        }
    }
}
PARAMS = {"data": {"root": "inputs", "train_split": "train"}, "toy": {"lr": 0.1, "drs": {"delta": 0.5}},
          "other": {"ignored": 1}}


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.delenv(tracking.DISABLE_ENV, raising=False)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "src.txt").write_text("source\n")
    (tmp_path / "inputs/sub").mkdir(parents=True)
    (tmp_path / "inputs/a.txt").write_text("a")
    (tmp_path / "inputs/sub/b.txt").write_text("b")
    return tmp_path


def _toy_stage(tmp_path):
    for epoch in range(3):
        tracking.log_metrics({"loss": 1.0 / (epoch + 1), "flag": True}, step=epoch + 1)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots").mkdir()
    (tmp_path / "metrics/toy.json").write_text(json.dumps({
        "miou": 42.0, "per_class_iou": {"background": 80.0, "cat": 4.0},
        "confusion_matrix": [[5, 1], [2, 3]], "classes": ["background", "cat"]}))
    (tmp_path / "plots/toy.csv").write_text("epoch,loss\n1,1.0\n")
    (tmp_path / "overlay.png").write_bytes(b"\x89PNG fake")
    tracking.log_artifact(tmp_path / "overlay.png", "overlays")


def test_stage_run_is_a_child_of_the_flow_run(toy_repo, monkeypatch):
    parent = tracking.start_parent("pipeline")
    assert parent
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    with tracking.stage_run("toy", PARAMS):
        _toy_stage(toy_repo)
    tracking.end_parent(parent, ok=True)

    c = tracking.client()
    exp = c.get_experiment_by_name(tracking.EXPERIMENT)
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"pipeline", "toy"}
    child = runs["toy"]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert runs["pipeline"].info.status == "FINISHED"
    # params: exactly the stage's dvc.yaml sections, flattened
    assert child.data.params == {"data.root": "inputs", "toy.lr": "0.1", "toy.drs.delta": "0.5"}
    # lineage: dep hashes as DVC computes them
    assert child.data.tags["dvc.dep.src.txt"] == hashlib.md5(b"source\n").hexdigest()
    assert child.data.tags["dvc.dep.inputs"] == lineage.dvc_md5("inputs") and child.data.tags["dvc.dep.inputs"].endswith(".dir")
    # per-epoch curve, booleans dropped
    history = c.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.333)]
    assert "flag" not in child.data.metrics
    files = {a.path for d in ("", "charts", "metrics", "plots", "overlays")
             for a in c.list_artifacts(child.info.run_id, d or None)}
    assert {"charts/toy_per_class_iou.png", "charts/toy_confusion_matrix.png", "metrics/toy.json",
            "plots/toy.csv", "overlays/overlay.png"} <= files


def test_a_stage_outside_a_flow_gets_its_own_run_and_failure_is_recorded(toy_repo):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("toy", PARAMS):
            raise RuntimeError("stage crashed")
    c = tracking.client()
    (run,) = c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED" and "mlflow.parentRunId" not in run.data.tags


def test_charts_of_a_class_without_an_iou_reach_mlflow(toy_repo):
    """summary() writes None for a class in neither ground truth nor prediction: both charts still come."""
    with tracking.stage_run("toy", PARAMS):
        (toy_repo / "metrics").mkdir()
        (toy_repo / "metrics/toy.json").write_text(json.dumps({
            "per_class_iou": {"background": 80.0, "cat": None, "dog": 3.0},
            "confusion_matrix": [[5, 1, 0], [0, 0, 0], [1, 0, 2]], "classes": ["background", "cat", "dog"]}))
    c = tracking.client()
    (run,) = c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert {a.path for a in c.list_artifacts(run.info.run_id, "charts")} == {
        "charts/toy_per_class_iou.png", "charts/toy_confusion_matrix.png"}


def test_broken_tracking_store_never_breaks_a_stage(toy_repo, monkeypatch, capfd):
    # a file where the store's directory should be: sqlite cannot open it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{toy_repo / 'src.txt' / 'mlflow.db'}")
    ran = []
    with tracking.stage_run("toy", PARAMS):
        tracking.log_metrics({"loss": 1.0}, step=1)
        tracking.log_artifact(toy_repo / "src.txt")
        ran.append(True)
    assert ran == [True]
    assert "warning: MLflow tracking" in capfd.readouterr().err


def test_dvc_md5_of_a_directory_follows_dvcs_listing(tmp_path):
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/z.txt").write_text("z")
    (tmp_path / "d/sub/a.txt").write_text("a")
    listing = [{"md5": hashlib.md5(b"a").hexdigest(), "relpath": "sub/a.txt"},
               {"md5": hashlib.md5(b"z").hexdigest(), "relpath": "z.txt"}]
    assert lineage.dvc_md5(tmp_path / "d") == hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"
    with pytest.raises(lineage.LineageError, match="nope"):
        lineage.dvc_md5(tmp_path / "nope")


def test_dep_hashes_never_raise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    spec = {"deps": ["a.txt", "gone.txt", "${vars_only.x}", "up.bin"]}
    lock = {"stages": {"up": {"outs": [{"path": "up.bin", "md5": "0" * 32}]}}}
    assert lineage.dep_hashes(spec, {}, lock) == {
        "a.txt": hashlib.md5(b"a").hexdigest(), "gone.txt": "missing", "${vars_only.x}": "unresolved",
        "up.bin": "0" * 32}


# --- one parent per `dvc repro` ---------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
STAGE_CODE = """
import sys
from wsss.tracking import runs
with runs.stage_run(sys.argv[1], {PARAMS!r}):
    runs.log_metrics({{"loss": 1.0}}, step=1)
    if sys.argv[2] == "fail":
        raise SystemExit("stage failed")
""".format(PARAMS=PARAMS)


def _fake_dvc(bin_dir: Path) -> Path:
    """An executable named `dvc` (a #!python script, like the real one in the venv) that runs each
    argument after `repro` as a stage command in a shell, the way `dvc repro` runs dvc.yaml's cmd
    (and, like --keep-going, goes on after a failed stage)."""
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                   "sys.exit(max(subprocess.run(['sh', '-c', c]).returncode for c in sys.argv[2:]))\n")
    dvc.chmod(0o755)
    return dvc


def _runs_by_parent(c):
    exp = c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    runs = c.search_runs([exp])
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("kind") == "pipeline"}
    children = {}
    for r in runs:
        if r.info.run_id not in parents:
            children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    return parents, children


def test_stage_runs_under_one_dvc_repro_share_one_parent(toy_repo, tmp_path):
    """Real processes: stage commands in a shell under a process named dvc, as under `dvc repro`;
    the grouping of several repros and of stages outside dvc is test_dvc_grouping_logic's."""
    dvc = _fake_dvc(tmp_path / "bin")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_TRACKING": "on"}
    env.pop(tracking.PARENT_ENV, None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=toy_repo, check=True)
    subprocess.run(git + ["add", "-A"], cwd=toy_repo, check=True)
    subprocess.run(git + ["commit", "-qm", "toy"], cwd=toy_repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=toy_repo, capture_output=True, text=True).stdout.strip()

    def stage(name, outcome="ok"):
        return f"{shlex.quote(sys.executable)} -c {shlex.quote(STAGE_CODE)} {name} {outcome}"

    repro = subprocess.run([str(dvc), "repro", stage("one"), stage("two", "fail")], cwd=toy_repo,
                           env=env, capture_output=True, text=True)
    assert repro.returncode != 0 and "stage failed" in repro.stderr, repro.stderr

    c = tracking.client()
    parents, children = _runs_by_parent(c)
    (parent,) = parents.values()
    assert None not in children  # no stray top-level stage run
    stages = children[parent.info.run_id]
    assert {r.info.run_name: r.info.status for r in stages} == {"one": "FINISHED", "two": "FAILED"}
    assert parent.info.run_name == "pipeline (dvc repro)" and parent.info.status == "FAILED"
    assert parent.info.end_time >= max(r.info.end_time for r in stages)
    assert parent.data.tags[tracking.GROUP_TAG].split(":")[1].isdigit()  # <host>:<dvc pid>:<start>
    assert parent.data.tags["dvc.command"].startswith("dvc repro ")
    assert parent.data.tags["git.commit"] == head == stages[0].data.tags["git.commit"]


def test_dvc_grouping_logic(toy_repo, monkeypatch, capfd):
    chain = {"now": []}
    monkeypatch.setattr(tracking, "_ancestors", lambda: iter(chain["now"]))
    shell = (11, 1.0, ["/bin/sh", "-c", "python -m tasks toy"])
    repro_a = [shell, (10, 100.0, ["/v/bin/python", "/v/bin/dvc", "repro"]), (9, 1.0, ["make", "run"])]
    repro_b = [shell, (10, 200.0, ["python3", "-m", "dvc", "exp", "run"])]  # pid reused, another start
    c = tracking.client()

    chain["now"] = repro_a
    with tracking.stage_run("toy", PARAMS):
        pass
    with tracking.stage_run("toy", PARAMS):
        (parent,) = [r for r in c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
                     if r.data.tags.get("kind") == "pipeline"]
        assert c.get_run(parent.info.run_id).info.status == "RUNNING"  # while a stage runs
    chain["now"] = repro_b
    with pytest.raises(RuntimeError):
        with tracking.stage_run("toy", PARAMS):
            raise RuntimeError("stage crashed")
    with tracking.stage_run("toy", PARAMS):  # `--keep-going`: a later stage does not clear FAILED
        pass
    chain["now"] = [shell, (9, 1.0, ["make", "run"])]
    with tracking.stage_run("toy", PARAMS):
        pass

    parents, children = _runs_by_parent(c)
    assert {p.info.run_name: p.info.status for p in parents.values()} == {
        "pipeline (dvc repro)": "FINISHED", "pipeline (dvc exp run)": "FAILED"}
    for p in parents.values():
        assert len(children[p.info.run_id]) == 2
        assert p.data.tags[tracking.GROUP_TAG].endswith((":10:100.00", ":10:200.00"))
        assert p.data.tags["kind"] == "pipeline"
    assert len(children[None]) == 1  # no dvc above: top-level

    # a failing process lookup costs the grouping, never the stage
    def broken():
        raise OSError("no /proc")
        yield

    monkeypatch.setattr(tracking, "_ancestors", broken)
    ran = []
    with tracking.stage_run("toy", PARAMS):
        ran.append(True)
    assert ran and "grouping stage 'toy'" in capfd.readouterr().err
    assert len(_runs_by_parent(c)[1][None]) == 2


@pytest.mark.parametrize("cmdline, args", [
    (["dvc", "repro"], ["repro"]),
    (["/w/.venv/bin/python", "/w/.venv/bin/dvc", "repro", "-f"], ["repro", "-f"]),
    (["/usr/bin/python3.11", "-m", "dvc", "exp", "run"], ["exp", "run"]),
    (["/bin/sh", "-c", "dvc repro"], None),
    (["python", "-m", "tasks", "demo"], None),
    (["python"], None),
    ([], None),
])
def test_dvc_command_lines(cmdline, args):
    assert tracking._dvc_args(cmdline) == args


RACE_CODE = """
import sys, time
from pathlib import Path
import mlflow.tracking  # imported before the start line, so the processes reach the store together
from wsss.tracking import runs
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
with runs.stage_run(sys.argv[1], {PARAMS!r}):
    runs.log_metrics({{"loss": 1.0}}, step=1)
""".format(PARAMS=PARAMS)


def test_a_fresh_store_is_opened_only_while_no_one_else_holds_its_lock(tmp_path, monkeypatch):
    """The first opening waits for an exclusive flock on `<db>.lock`, the lock processes of every
    version of this code take, and takes it once per process."""
    import threading
    fcntl = pytest.importorskip("fcntl")

    monkeypatch.setattr(tracking, "_opened", set())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    entered = []

    def open_store():
        with tracking._first_opening(uri) as first:
            entered.append(first)

    with open(tmp_path / "mlflow.db.lock", "a") as other:   # another process's hold, as a raw flock
        fcntl.flock(other, fcntl.LOCK_EX)
        opener = threading.Thread(target=open_store)
        opener.start()
        opener.join(0.5)
        assert opener.is_alive() and entered == []
    opener.join(10)
    assert entered == [True]
    open_store()
    assert entered == [True, False]   # once per process: later openings take no lock


def test_stages_that_open_a_fresh_store_at_once_are_all_tracked(toy_repo):
    """Processes that create one new SQLite store at the same moment all migrate it in turn (before
    the lock, one failed in alembic and ran untracked)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_TRACKING": "on", "OMP_NUM_THREADS": "1"}
    go = toy_repo / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACE_CODE, f"stage{i}", str(toy_repo / f"ready{i}"), str(go)],
                              cwd=toy_repo, env=env, stderr=subprocess.PIPE, text=True) for i in range(4)]
    while not all((toy_repo / f"ready{i}").exists() for i in range(4)):
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert not [e for e in errors if "warning: MLflow tracking" in e], errors
    c = tracking.client()
    exp = c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert sorted(r.info.run_name for r in c.search_runs([exp])) == [f"stage{i}" for i in range(4)]


def test_a_stage_start_marks_runs_of_dead_processes_killed(toy_repo):
    import re
    import socket

    import psutil

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()   # its pid is now dead (and a reused pid would have another start time)
    me = psutil.Process()
    c = tracking.client()
    exp = tracking.experiment_id(c)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    tag = "wsss.process"   # <host>:<pid>:<process start time>
    made = {name: c.create_run(exp, run_name=name, tags={tag: value}).info.run_id for name, value in {
        "killed": f"{host}:{gone.pid}:{time.time() - 5:.2f}",
        "reused pid": f"{host}:{me.pid}:{me.create_time() - 100:.2f}",
        "alive": f"{host}:{me.pid}:{me.create_time():.2f}",
        "other host": f"not-{host}:{gone.pid}:1.00"}.items()}
    with tracking.stage_run("toy", PARAMS):
        _toy_stage(toy_repo)
    status = {name: c.get_run(run_id).info.status for name, run_id in made.items()}
    assert status == {"killed": "KILLED", "reused pid": "KILLED", "alive": "RUNNING", "other host": "RUNNING"}
    (stage,) = [r for r in c.search_runs([exp]) if r.info.run_name == "toy"]
    assert stage.info.status == "FINISHED" and stage.data.tags[tag].startswith(f"{host}:{os.getpid()}:")
