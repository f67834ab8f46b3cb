"""MLflow tracking of stage runs: parent/child runs, params by dvc.yaml section, lineage tags,
metrics, charts; and a broken store never breaks a stage."""
import hashlib
import json

import pytest
import yaml

from tracking import lineage
from tracking import runs as tracking

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
