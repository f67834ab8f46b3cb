"""Helpers for tests that need a real Prefect server and a process serving the deployments.

Each server gets a free 127.0.0.1 port and its own PREFECT_HOME (SQLite inside); every process
starts in its own session and is stopped (SIGTERM, then SIGKILL) when the block ends.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
QUIET = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
         "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def started(cmd: list[str], health: str, env: dict, cwd: Path, log: Path, timeout: float = 90):
    """Yields the process running `cmd` once `health` answers 200."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        _wait_http(health, proc, log, timeout)
        yield proc
    finally:
        stop(proc)


def prefect_envs(tmp: Path, port: int) -> tuple[str, dict, dict]:
    """(api_url, env for clients, env for the server) of a server on `port` with its home in `tmp`."""
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **QUIET, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # The UI calls the API at PREFECT_UI_API_URL, 127.0.0.1:4200 unless told this port.
    return api, env, {**{k: v for k, v in env.items() if k != "PREFECT_API_URL"}, "PREFECT_UI_API_URL": api}


@contextlib.contextmanager
def prefect_server(tmp: Path):
    """Yields (api_url, env for clients of this server)."""
    port = free_port()
    api, env, server_env = prefect_envs(tmp, port)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started(cmd, f"{api}/health", server_env, tmp, tmp / "prefect-server.log"):
        yield api, env


def listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process `pid` and of its descendants."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    return found


@contextlib.contextmanager
def serving(repo: Path, env: dict, log: Path):
    """`python -m flows serve` in `repo`, polling for work every second."""
    serve_env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                 "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows", "serve"], cwd=repo, env=serve_env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        # Before the server: a runner whose server is gone retries and ignores SIGTERM. SIGINT is
        # the runner's clean shutdown (SIGTERM leaves an un-awaited coroutine in its log).
        stop(proc, sig=signal.SIGINT)


def wait_for_deployment(client, name: str, proc: subprocess.Popen, log: Path, timeout: float = 90):
    """The deployment `flow/name` once the serving process has registered it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serving exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            return client.read_deployment_by_name(name)
        time.sleep(1)
    raise TimeoutError(f"deployment {name} not registered after {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for_run(client, run_id, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} not finished after {timeout} s:\n{log.read_text()[-3000:]}")


def git_env() -> dict:
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def small_repo(dest: Path) -> Path:
    """A committed copy of the repository with the tiny SMALL params and a local DVC remote."""
    from wsss.commands import gitdvc
    from tests.test_pipeline_dvc import SMALL, copy_repo, shrink

    repo = copy_repo(dest)
    shrink(repo, SMALL)
    subprocess.run(["git", "commit", "-qam", "small params"], cwd=repo, check=True, env=git_env())
    gitdvc.ensure_local_remote(repo)
    return repo


def run_logs(client, run_id, until: str, timeout: float = 60) -> str:
    """The flow run's log text once it contains `until` (logs reach the API in batches, after the
    run's final state), or whatever arrived by the timeout."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        entries, page = [], None
        while page is None or len(page) == 200:  # the API returns at most 200 per request
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200,
                                    offset=len(entries))
            entries += page
        text = "\n".join(e.message for e in entries)
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(1)
