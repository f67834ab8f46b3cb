"""Run a command and hand each output line to a logger as it arrives (Prefect shows them live)."""
from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path
from typing import Callable


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
