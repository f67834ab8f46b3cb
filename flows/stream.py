"""Run a command and hand each output line to a logger as it arrives (Prefect shows them live)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable


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


def run_logged(argv: list[str], cwd: str | Path, log: Callable[[str], None],
               env: dict[str, str] | None = None, keep: int = 200) -> tuple[int, str]:
    """(exit code, the last `keep` lines). stderr is merged into stdout to keep their order;
    text mode splits tqdm's carriage-return updates into lines too."""
    tail: deque[str] = deque(maxlen=keep)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log(line)
    except BaseException:  # cancelled or crashed: do not leave the stage running on its own
        proc.terminate()
        raise
    finally:
        proc.stdout.close()
        rc = proc.wait()
    return rc, "\n".join(tail)
