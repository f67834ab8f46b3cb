"""Thin wrappers over the git and dvc command lines, for versioning (no Prefect here)."""
from __future__ import annotations

import json
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


def cache_dir(repo: str | Path) -> Path:
    proc = dvc(repo, "cache", "dir", check=False)
    path = proc.stdout.strip() if proc.returncode == 0 else ""
    return Path(path) if path else Path(repo) / ".dvc" / "cache"


def _object(cache: Path, md5: str) -> Path | None:
    """Where the cache holds the object of `md5` (DVC 3's files/md5/, else 2.x's layout), or None."""
    name = md5[:2] + "/" + md5[2:]
    return next((p for p in (cache / "files" / "md5" / name, cache / name) if p.is_file()), None)


def missing_objects(repo: str | Path, md5s: dict[str, str]) -> dict[str, int]:
    """{output: objects the local cache lacks} for `{output: md5}` (a `.dir` md5: its listing and
    every file in it); outputs complete in the cache are left out."""
    cache, missing = cache_dir(repo), {}
    for out, md5 in md5s.items():
        listing = _object(cache, md5)
        if listing is None:
            missing[out] = 1
        elif md5.endswith(".dir"):
            try:
                entries = json.loads(listing.read_text())
            except ValueError:
                entries = None
            lacking = 1 if not isinstance(entries, list) else sum(_object(cache, e["md5"]) is None for e in entries)
            if lacking:
                missing[out] = lacking
    return missing


# `dvc fetch` has no --rev: fetch a commit's outputs through DVC's API, without touching the workspace.
_FETCH_AT = ("import sys; from dvc.repo import Repo; "
             "Repo(sys.argv[1]).fetch(targets=sys.argv[3:], revs=[sys.argv[2]], workspace=False)")


def fetch_at(repo: str | Path, rev: str, targets: list[str]) -> subprocess.CompletedProcess:
    """Fetch `targets` as commit `rev` locked them from the default remote into the cache (no check)."""
    return subprocess.run([sys.executable, "-c", _FETCH_AT, str(Path(repo).resolve()), rev, *targets],
                          cwd=repo, env=tool_env(), capture_output=True, text=True)
