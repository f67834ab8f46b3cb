"""The repository speaks of the product, not of how it was made: no work sessions, issue numbers,
scratch run names, build-machine paths or anonymous host names in any tracked text file (docs,
README, code, comments, params.yaml, result records). Dates and commits say when something was
measured; git keeps the history.

A legitimate use (an HTTP or database session, pytest's session scope, a process session) goes in
ALLOWED with the reason it is not lab talk."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().relative_to(REPO).as_posix()

ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
            "thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|"
            "twenty-\\w+|thirtieth")

# name -> pattern (case-insensitive) of lab talk
RULES = {
    "numbered session": r"\bsessions?\s*#?\d+",
    "ordinal session": rf"\b({ORDINALS})(\s*/\s*({ORDINALS}))?\s+sessions?\b",
    "session (work session)": r"\bsessions?\b",
    "issue number": r"\bissues?\s*#?\s*\d+",
    "scratch run name": r"\bi\d+_s\d+\b",
    "scratch path under /tmp": r"/tmp/[\w.-]+",
    "build-machine path": r"(?<![\w./~-])/work/",
    "shared data folder of the build machine": r"shared/data/voc2012-mini",
    "anonymous host": r'"host"\s*:\s*"vm"',
}

# (path regex, line regex, reason): a hit on such a line of such a file is not lab talk
ALLOWED = [
    (r"^tests/conftest\.py$", r'scope="session"', "pytest's session-scoped fixture"),
    (r"^tests/conftest\.py$", r"run once per session", "pytest's test session"),
    (r"^tests/test_pipeline_kill\.py$", r"session's shared run, conftest\.small_repro",
     "pytest's test session (the session-scoped fixture)"),
    (r"^tests/servers\.py$", r"starts in its own session", "a process session (setsid)"),
    (r"^\.ci/run$", r"shared/data/voc2012-mini", "CI looks for the dataset beside the checkout"),
    (r".*", r"\bstart_new_session\b|\bSession\(|requests\.Session|sqlalchemy|\bHTTP session|"
     r"\bdatabase session|\bDB session|\bbrowser session", "an HTTP, database or browser session"),
]


def tracked_text_files(repo: Path = REPO) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode().split("\0") if p and p != HERE]


def allowed(path: str, line: str) -> bool:
    return any(re.search(p, path) and re.search(l, line, re.IGNORECASE) for p, l, _ in ALLOWED)


def findings(repo: Path = REPO) -> list[str]:
    rules = {name: re.compile(rx, re.IGNORECASE) for name, rx in RULES.items()}
    hits = []
    for path in tracked_text_files(repo):
        file = repo / path
        if not file.is_file():
            continue
        data = file.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images, parquet)
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            for name, rx in rules.items():
                if rx.search(line) and not allowed(path, line):
                    hits.append(f"{path}:{number}: {name}: {line.strip()[:160]}")
                    break
    return hits


def test_no_lab_talk_in_tracked_files():
    hits = findings()
    assert not hits, (f"{len(hits)} line(s) speak of how the project was made (sessions, issue numbers, "
                      "scratch runs, machine paths); say it with a date, a commit or neutral wording, "
                      "or add a legitimate use to ALLOWED:\n" + "\n".join(hits[:60]))


@pytest.mark.parametrize("line, lab", [
    # the examples are split so that this file does not hold the phrases it looks for
    ("measured in the sixteen" "th session", True),
    ("rows of session " "17", True),
    ("(sixteenth/seventeen" "th sessions: labels 47.72)", True),
    ("see issue 18", True),
    ("fixed in issue #5", True),
    ("--run /tmp/wsss-pipeline/i18_s0", True),
    ("WSSS_VOC_MINI=/work/shared/" "data/voc2012-mini", True),
    ('{"host": "vm", "cpus": 2}', True),
    ("this session's machine", True),
    ("benchmarks/work/pipeline/voc_mini", False),
    ("measured 2026-11-28 at c57c031", False),
    ("an issue with the CRF", False),
])
def test_rules_catch_lab_talk(line, lab):
    assert any(re.search(rx, line, re.IGNORECASE) for rx in RULES.values()) is lab
