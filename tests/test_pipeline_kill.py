"""A `dvc repro` SIGKILLed in the middle of a stage, then plain `dvc repro`, ends where a run never killed ends.

Two copies of the repo with the same small params: one runs `dvc repro` straight through (the
session's shared run, conftest.small_repro, compared as it first finished); the other is killed
(the whole process group, stage process included) while pseudo_labels is writing its labels (its
temporary `artifacts/.pseudo_labels.*` folder exists), then `dvc repro` is run again with no other step.
The hashes dvc.lock records for every output must agree for the stages that are bit-deterministic on
CPU (stages that ran before the kill in one process, and the interrupted stage and everything after
it in the second one).

The killed copy runs `dvc repro pseudo_labels` (the stages up to the labels) and is compared with the
same stages of the straight run. Measured with SMALL over the whole
pipeline (reference enabled, val at 4 scales + flip): every stage is bit-deterministic on CPU across processes (dvc.lock md5 of every
artifact, report folder, sweep and per-class plot equal, the bf16 segmenter and reference included);
only the files that carry wall-clock timings differ (VARYING), and those agree once the timings are
dropped. A killed `dvc repro` needs no recovery step: DVC drops the dead PID's rwlock entry itself.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_dvc import SMALL, copy_repo, dvc, shrink

KILLED_STAGE = "pseudo_labels"   # its CRF pool takes a second to start: a window inside the write
TARGET = "pseudo_labels"   # repro up to the labels: the segmenter and reference training are minutes
                           # on 2 cores and write the way every stage does (wsss.stores.atomic)
TEMP_GLOB = ".pseudo_labels.*"   # wsss.stores.atomic.atomic_path's temporary sibling of artifacts/pseudo_labels

# Outputs whose bytes are not a function of the inputs, and why (everything else must match).
VARYING = {
    # wall-clock timings (train_seconds, seconds, eval_seconds) are part of these metrics files
    "metrics/classifier.json", "metrics/maps.json", "metrics/refiner.json", "metrics/refined_maps.json",
    "metrics/pseudo_labels.json", "metrics/segmentation.json", "metrics/reference.json",
    # summarize copies the timings above into its table
    "metrics/summary.json", "metrics/results.md",
    # training curves: epoch,loss,seconds
    "plots/classifier_train.csv", "plots/refiner_train.csv", "plots/segmentation_train.csv", "plots/reference_train.csv",
    # label round r1: its labels', segmenter's and maps' metrics carry seconds, its training curve too
    "metrics/rounds/r1/pseudo_labels.json", "metrics/rounds/r1/segmentation.json", "metrics/rounds/r1/maps.json",
    "plots/rounds/r1/segmentation_train.csv",
}


def without_timings(path: Path):
    """A VARYING file's content less its wall-clock figures: metrics JSON without *seconds keys,
    training curves without the seconds column; None for the summary table (timings in every row)."""
    if path.suffix == ".json":
        def strip(node):
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if "seconds" not in k}
            return [strip(v) for v in node] if isinstance(node, list) else node
        return strip(json.loads(path.read_text()))
    if path.suffix == ".csv":
        return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]
    return None


def lock_hashes(repo: Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {stage: {o["path"]: o["md5"] for o in body.get("outs", [])} for stage, body in lock["stages"].items()}


def planned_stages(repo: Path) -> set[str]:
    """The stages `dvc repro TARGET` runs in repo: TARGET and everything upstream (`dvc dag`)."""
    dag = dvc(repo, "dag", "--mermaid", TARGET)
    assert dag.returncode == 0, dag.stdout + dag.stderr
    return set(re.findall(r'^\s*node\d+\["([^"]+)"\]', dag.stdout, re.M))


def leftover_temporaries(repo: Path) -> list[str]:
    """atomic_path's `.NAME.xxxx` folders anywhere a stage writes."""
    return sorted(str(p.relative_to(repo)) for top in ("artifacts", "metrics", "plots", "reports")
                  for p in (repo / top).glob(".*") if p.is_dir())


def start_repro(repo: Path, log: Path) -> subprocess.Popen:
    """`dvc repro` in its own process group (as dvc() in test_pipeline_dvc runs it), output to `log`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", TARGET], cwd=repo, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_mid_write(repo: Path, log: Path, timeout: float = 900) -> None:
    proc = start_repro(repo, log)
    deadline = time.monotonic() + timeout
    try:
        while not list((repo / "artifacts").glob(TEMP_GLOB)):
            assert proc.poll() is None, f"dvc repro ended before {KILLED_STAGE} was caught mid-write:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{KILLED_STAGE} never started writing:\n{log.read_text()}"
            time.sleep(0.01)
        time.sleep(0.2)   # inside the write: the CRF workers are starting, no shard renamed into place
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # dvc, the stage process and anything it started
        proc.wait()
    assert f"Running stage '{KILLED_STAGE}'" in log.read_text()
    assert not (repo / "artifacts/pseudo_labels").exists(), "killed too late: the labels were already in place"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_repro):
    first = small_repro["run"]
    assert first.returncode == 0, first.stdout + first.stderr
    base = tmp_path_factory.mktemp("kill")

    killed = copy_repo(base / "killed")
    shrink(killed, SMALL)
    planned = planned_stages(killed)
    kill_mid_write(killed, base / "killed.log")
    after_kill = {"temporaries": leftover_temporaries(killed),
                  "lock": lock_hashes(killed) if (killed / "dvc.lock").exists() else {}}
    # What a user does after the crash: run it again. Nothing to unlock or clean by hand.
    resumed = dvc(killed, "repro", TARGET)
    assert resumed.returncode == 0, "plain `dvc repro` after a SIGKILL failed:\n" + resumed.stdout + resumed.stderr
    return {"straight": small_repro["snapshot"], "killed": killed, "after_kill": after_kill, "resumed": resumed,
            "planned": planned}


@pytest.mark.slow
def test_killed_then_resumed_repro_matches_uninterrupted(runs):
    after_kill, resumed = runs["after_kill"], runs["resumed"]
    # The kill happened where intended: upstream stages were recorded, the killed stage was not.
    assert {"demo", "manifest", "train_classifier", "export_maps", "export_refined"} <= set(after_kill["lock"])
    assert KILLED_STAGE not in after_kill["lock"]
    assert any(t.startswith(f"artifacts/{TEMP_GLOB[:-2]}") for t in after_kill["temporaries"]), after_kill
    # The resumed run redid the killed stage and did not redo what finished before the kill.
    assert f"Running stage '{KILLED_STAGE}'" in resumed.stdout
    assert "Running stage 'train_classifier'" not in resumed.stdout

    # The straight run went on past the labels; compare the stages `dvc repro TARGET` runs, every one
    # of which the killed copy must have recorded.
    straight, killed = lock_hashes(runs["straight"]), lock_hashes(runs["killed"])
    assert KILLED_STAGE in runs["planned"] and set(killed) == runs["planned"], (runs["planned"], set(killed))
    assert set(killed) <= set(straight), (set(straight), set(killed))
    mismatched = [f"{stage}: {path}" for stage, outs in killed.items() for path, md5 in outs.items()
                  if path not in VARYING and straight[stage].get(path) != md5]
    assert not mismatched, f"outputs differ from the uninterrupted run: {mismatched}"
    # The files with timings in them agree on everything else (losses, scores, counts).
    for path in sorted(VARYING & {p for outs in killed.values() for p in outs}):
        a, b = without_timings(runs["straight"] / path), without_timings(runs["killed"] / path)
        assert a == b, f"{path} differs from the uninterrupted run beyond its timings"
    assert all(set(straight[s]) == set(killed[s]) for s in killed)


@pytest.mark.slow
def test_no_stale_temporaries_after_resumed_repro(runs):
    """The killed writer's `.pseudo_labels.*` folders (artifacts/ and reports/) go with the next write."""
    assert runs["after_kill"]["temporaries"], "the kill left no temporary: nothing was tested"
    assert leftover_temporaries(runs["killed"]) == []
