import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def voc_fixture(tmp_path) -> Path:
    """A tiny VOC-layout dataset: 4 train + 2 val images with masks, 3 classes."""
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    rng = np.random.default_rng(0)
    ids = {"train": [f"tr{i}" for i in range(4)], "val": [f"va{i}" for i in range(2)]}
    for split, names in ids.items():
        for k, name in enumerate(names):
            img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            mask = np.zeros((40, 50), np.uint8)
            mask[5:20, 5:25] = 1 + (k % 2)
            if k == 0:
                mask[25:35, 30:45] = 2
            mask[5, 5:25] = 255
            Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg")
            Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def voc_mini_root() -> Path | None:
    root = os.environ.get("WSSS_VOC_MINI")
    return Path(root) if root and Path(root).is_dir() else None


@pytest.fixture(scope="session")
def small_repro(tmp_path_factory) -> dict:
    """One `dvc repro` of the whole pipeline with tests.test_pipeline_dvc.SMALL in a fresh copy of the
    repo, shared by the tests that need a finished run (minutes on 2 cores, so run once per session).
    {"repo": the copy (tests may change it afterwards), "run": the CompletedProcess, "snapshot": a
    folder holding dvc.lock, metrics/ and plots/ as that first run left them, for tests that compare
    against it after another test has changed the repo}."""
    from tests.test_pipeline_dvc import SMALL, copy_repo, dvc, shrink

    base = tmp_path_factory.mktemp("small_repro")
    repo = copy_repo(base / "repo")
    shrink(repo, SMALL)
    run = dvc(repo, "repro")
    snapshot = base / "snapshot"
    snapshot.mkdir()
    if run.returncode == 0:
        shutil.copy2(repo / "dvc.lock", snapshot / "dvc.lock")
        for folder in ("metrics", "plots"):
            shutil.copytree(repo / folder, snapshot / folder)
    return {"repo": repo, "run": run, "snapshot": snapshot}
