"""Thin wrappers over the git and dvc command lines, for versioning (no Prefect here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


# Commits made for the user by the pipeline need an identity even on a fresh CI machine.
_FALLBACK_IDENTITY = ["-c", "user.name=wsss-pipeline", "-c", "user.email=wsss-pipeline@localhost"]


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for dvc and the stages: this venv first on PATH, telemetry off, unbuffered."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DO_NOT_TRACK", "true")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env["PYTHONUNBUFFERED"] = "1"  # stage prints reach the log when they happen
    env.update(extra or {})
    return env


class CommandError(RuntimeError):
    pass


def git(repo: str | Path, *args: str, check: bool = True) -> str:
    prefix = [] if _has_identity(repo) else _FALLBACK_IDENTITY
    proc = subprocess.run(["git", *prefix, *args], cwd=repo, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise CommandError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _has_identity(repo) -> bool:
    proc = subprocess.run(["git", "config", "user.email"], cwd=repo, capture_output=True, text=True)
    return bool(proc.stdout.strip())


def show(repo: str | Path, rev: str, path: str) -> str | None:
    """A file's text at a revision, or None where it did not exist."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def dvc(repo: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=tool_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise CommandError(f"dvc {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def default_remote(repo: str | Path) -> str | None:
    proc = dvc(repo, "remote", "default", check=False)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def ensure_local_remote(repo: str | Path, path: str | Path = ".dvc-remote", name: str = "local") -> str:
    """A default DVC remote in a local directory, configured in .dvc/config.local so clones do
    not inherit this machine's path. Keeps an existing default remote."""
    repo = Path(repo).resolve()
    current = default_remote(repo)
    if current:
        return current
    target = (repo / path).resolve()
    target.mkdir(parents=True, exist_ok=True)
    dvc(repo, "remote", "add", "--local", "--force", "--default", name, str(target))
    return name
