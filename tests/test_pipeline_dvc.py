"""End to end: `dvc repro` of the stages on a few demo images, in a temporary copy of the repo."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsss.stores import mapstore
from wsss.config.params import load, set_dotted, validate
from tasks.__main__ import expanded
from tests.conftest import REPO

SMALL = [
    "demo.n_train=6", "demo.n_val=3", "demo.image_size=64",
    "classifier.epochs=1", "classifier.batch_size=3", "classifier.crop_size=64",
    "classifier.resize_long=[64, 80]", "classifier.extra_channels=16",
    "maps.scales=[1.0]", "maps.n_overlays=2",
    "refiner.epochs=1", "refiner.batch_size=3", "refiner.crop_size=64", "refiner.resize_long=[64, 80]",
    "refiner.aspp_channels=16",
    "pseudo_labels.n_samples=2",
    "segmenter.epochs=1", "segmenter.batch_size=3", "segmenter.crop_size=64", "segmenter.resize_long=[64, 80]",
    "segmenter.aspp_channels=16",
]


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        src = REPO / rel
        # The code and config only: no recorded run (dvc.lock, metrics), as on a machine that never ran it.
        if src.is_file() and rel != "dvc.lock" and not rel.startswith(("data/", "artifacts/", "reports/", "metrics/", "plots/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


def shrink(repo: Path, overrides: list[str]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for o in overrides:
        params = set_dotted(params, o)
    validate(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(repo: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_dvc_repro_demo_end_to_end(small_repro):
    repo, run = small_repro["repo"], small_repro["run"]   # `dvc repro` with SMALL in a fresh copy
    assert run.returncode == 0, run.stdout + run.stderr

    maps = json.loads((repo / "metrics/maps.json").read_text())
    assert maps["n_images"] == 6 and maps["n_evaluated"] == 6
    assert 0.0 <= maps["miou"] <= 100.0 and len(maps["sweep"]) >= 10  # quality: tests/test_quality_floor.py
    assert set(maps["per_class_iou"]) == {"background", "beetle", "fish", "kite", "robot"}
    stored = list(mapstore.read(repo / "artifacts/maps"))
    assert len(stored) == 6 and all(m.shape == (len(c), 64, 64) and m.max() > 0.99 for _, c, m in stored)
    assert len(list((repo / "reports/maps").glob("*.png"))) == 2
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(expanded(load(repo / "params.yaml")))  # every stage ran (rounds: each)
    for name in ("refined_maps", "pseudo_labels", "segmentation", "reference", "semi", "summary"):
        assert (repo / "metrics" / f"{name}.json").exists(), name
    assert json.loads((repo / "metrics/semi.json").read_text())["enabled"] is False   # the default: weak only
    seg = json.loads((repo / "metrics/segmentation.json").read_text())
    assert {"val_miou", "val_miou_crf", "per_class_iou"} <= set(seg)
    assert (repo / "reports/segmentation/confusion_matrix.png").exists()
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["weak_to_full_ratio"] == pytest.approx(seg["val_miou"] / json.loads(
        (repo / "metrics/reference.json").read_text())["val_miou"], abs=1e-3)

    # Nothing changed: a fast no-op.
    start = time.perf_counter()
    again = dvc(repo, "repro")
    assert again.returncode == 0 and "didn't change" in again.stdout
    assert "Running stage" not in again.stdout
    assert time.perf_counter() - start < 30

    # A maps parameter that changes only the overlays re-runs export_maps and nothing upstream; its
    # maps come out byte-identical, so nothing that learns from them re-runs (the reference never
    # depends on the maps), only the summary of the metrics.
    shrink(repo, ["maps.n_overlays=1"])
    third = dvc(repo, "repro")
    assert third.returncode == 0, third.stderr
    assert "Running stage 'export_maps'" in third.stdout and "Running stage 'train_classifier'" not in third.stdout
    for downstream in ("train_refiner", "pseudo_labels", "train_segmenter", "train_reference"):
        assert f"Running stage '{downstream}'" not in third.stdout, downstream
    assert len(list((repo / "reports/maps").glob("*.png"))) == 1
    assert np.isfinite(json.loads((repo / "metrics/maps.json").read_text())["miou"])
