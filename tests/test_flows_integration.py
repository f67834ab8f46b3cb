"""A real Prefect server on a free port serves the deployments; a run started through the API (the
call the UI's Run button makes) goes through DVC, records dvc.lock, tracks to MLflow and versions
the labels."""
import re
import subprocess
import uuid

import pytest
import yaml

from flows import dvc_commands
from wsss.commands import versions
from wsss.tracking import lineage
from wsss.tracking import runs as tracking
from tests import servers
from tests.test_pipeline_dvc import dvc


@pytest.mark.slow
def test_deployment_run_goes_through_dvc_and_mlflow(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo = servers.small_repo(tmp_path / "repo")
    # The stages up to the one that makes the versioned labels (what downstream of it trains adds
    # minutes, not coverage), each its own task; the run asks for them the way the form does.
    dvc_yaml = lineage.read_yaml(repo / "dvc.yaml")
    label_out = versions.label_outputs(repo)[0]
    all_stages = dvc_commands.pipeline_stages(repo)
    producer = next(s for s in all_stages if label_out in lineage.stage_outputs(lineage.stage_spec(dvc_yaml, s)))
    stages = all_stages[:all_stages.index(producer) + 1]
    assert not (repo / "dvc.lock").exists()
    serve_log = tmp_path / "serve.log"
    with servers.prefect_server(tmp_path) as (api, env), temporary_settings({PREFECT_API_URL: api}), \
            servers.serving(repo, env, serve_log) as proc, get_client(sync_client=True) as client:
        deployment = servers.wait_for_deployment(client, "pipeline/pipeline", proc, serve_log)
        for stage in all_stages:  # one deployment per dvc.yaml stage as well
            servers.wait_for_deployment(client, f"stage-{stage}/{stage}", proc, serve_log)
        assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 1

        name = f"it-{uuid.uuid4().hex[:8]}"
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 2, "stages": stages},
                                                  name=name)
        run = servers.wait_for_run(client, run.id, timeout=600, log=serve_log)
        assert run.state.is_completed(), f"{run.state}\n{serve_log.read_text()[-4000:]}"

        # Stage output streamed into the Prefect log; training tasks carry the gpu tag.
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        logs = servers.run_logs(client, run.id, until="recorded labels-v")
        assert "Running stage 'train_classifier'" in logs and "dvc exp run -S classifier.epochs=2" in logs
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        tags = {t.name.rsplit("-", 1)[0]: set(t.tags) for t in task_runs}  # names end in "-<counter>"
        assert "gpu" in tags["stage-train_classifier"] and "gpu" not in tags["stage-demo"], tags

        # The same request again: DVC finds every stage unchanged and recomputes nothing.
        rerun = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 2, "stages": stages},
                                                    name=name + "-again")
        rerun = servers.wait_for_run(client, rerun.id, timeout=300, log=serve_log)
        assert rerun.state.is_completed(), f"{rerun.state}\n{serve_log.read_text()[-4000:]}"
        relogs = servers.run_logs(client, rerun.id, until="no new version")
        assert f"dvc exp run -S classifier.epochs=2 {producer}" in relogs and "Running stage" not in relogs
        assert "no new version" in relogs

    # Offline hygiene: no telemetry/analytics complaints, no errors from the server or the runner.
    for log in (tmp_path / "prefect-server.log", serve_log):
        text = log.read_text()
        assert not {"telemetry", "analytics"} & set(re.findall(r"[a-z]+", text.lower())), log
        assert "| ERROR" not in text and "Traceback" not in text, text[-3000:]

    # DVC recorded the run, with the UI's override applied through `dvc exp run -S`.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {name.partition("@")[0] for name in lock["stages"]} == set(stages)   # label_round runs as label_round@r1
    assert lock["stages"]["train_classifier"]["params"]["params.yaml"]["classifier"]["epochs"] == 2
    assert yaml.safe_load((repo / "params.yaml").read_text())["classifier"]["epochs"] == 2

    # MLflow: one parent for the flow run, one child per stage, lineage tags equal to dvc.lock.
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    c = tracking.client()
    runs = c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == str(run.id)]
    assert len([r for r in runs if r.data.tags.get("kind") == "pipeline"]) == 2  # the rerun has its own
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == set(lock["stages"])   # one per stage DVC ran, foreach ones as name@key
    for stage, child in children.items():
        assert child.info.status == "FINISHED" and child.data.tags.get("git.commit")
        deps = {d["path"]: d["md5"] for d in lock["stages"][stage].get("deps", [])}
        assert {k[len("dvc.dep."):]: v for k, v in child.data.tags.items() if k.startswith("dvc.dep.")} == deps
    assert c.get_metric_history(children["train_classifier"].info.run_id, "loss")
    assert children["train_classifier"].data.params["classifier.epochs"] == "2"
    assert any(a.path.endswith("per_class_iou.png")  # export_maps' metrics carry per_class_iou
               for a in c.list_artifacts(children["export_maps"].info.run_id, "charts"))

    # The run changed the labels: a version (commit + tag) and the bytes in the default remote.
    tags = subprocess.run(["git", "tag"], cwd=repo, capture_output=True, text=True).stdout.split()
    # One version per label output the run made (each round's, then the final labels); the tag names the last.
    made = versions.label_outputs(repo)
    assert tags == [f"labels-v{len(made)}"] and len(made) == 2, (tags, made)
    assert {v.output for v in versions.versions(repo)} == set(made)
    assert subprocess.run(["git", "status", "--porcelain", "dvc.lock", "params.yaml"], cwd=repo,
                          capture_output=True, text=True).stdout == ""
    assert any((repo / ".dvc-remote").rglob("*")), "dvc push left the remote empty"

    # Nothing changed since: `dvc repro` re-runs nothing (no time bound here: speed figures belong in
    # benchmarks, and a loaded CI machine made the old 2-second bound flaky).
    # A full repro when the run covered the whole pipeline, else up to the label stage.
    targets = [] if stages == all_stages else [producer]
    again = dvc(repo, "repro", *targets)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
