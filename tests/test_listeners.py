"""Every server the project starts listens on 127.0.0.1 only: the Dask scheduler and dashboard of the
local cluster (wsss/scaleout/engine.py), and the Prefect server and MLflow UI as the Makefile starts them."""
import os
import shlex
from urllib.parse import urlsplit

import pytest

from wsss.scaleout.engine import local_cluster
from tests import servers
from tests.conftest import REPO

LOOPBACK = {"127.0.0.1", "::1"}


def exposed(found: set[tuple[str, int]]) -> set[tuple[str, int]]:
    return {(ip, port) for ip, port in found if ip not in LOOPBACK}


def recipe(target: str) -> list[str]:
    """The first command of a Makefile target, so the test starts what `make <target>` starts."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"{target}:"))
    return shlex.split(lines[start + 1].strip())


def test_the_local_dask_cluster_listens_on_loopback_only():
    cluster = local_cluster(1)
    try:
        found = servers.listeners(os.getpid())
        dashboard = urlsplit(cluster.cluster.dashboard_link).port
        scheduler = int(cluster.scheduler_address.rsplit(":", 1)[1])
        assert {dashboard, scheduler} <= {port for _, port in found}   # the check sees both servers
        assert not exposed(found), f"Dask listens beyond this machine: {sorted(exposed(found))}"
    finally:
        cluster.close()


@pytest.mark.slow
def test_the_makefile_prefect_server_and_mlflow_ui_listen_on_loopback_only(tmp_path):
    port = servers.free_port()
    api, _, server_env = servers.prefect_envs(tmp_path, port)
    prefect = recipe("server") + ["--port", str(port)]
    mlflow_port = servers.free_port()
    mlflow = recipe("mlflow-ui")
    mlflow[mlflow.index("--port") + 1] = str(mlflow_port)
    for cmd, health, own in ((prefect, f"{api}/health", port), (mlflow, f"http://127.0.0.1:{mlflow_port}/health",
                                                                  mlflow_port)):
        with servers.started(cmd, health, server_env, tmp_path, tmp_path / f"{cmd[0]}.log") as proc:
            found = servers.listeners(proc.pid)
        assert own in {p for _, p in found}, f"{cmd}: its port {own} not among its listeners {sorted(found)}"
        assert not exposed(found), f"{shlex.join(cmd)} listens beyond this machine: {sorted(exposed(found))}"
