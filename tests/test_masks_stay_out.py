"""Masks stay out of training: scrambling the train masks (same tags) changes the scores, nothing else.

Two copies of a small demo dataset differ only in the train images' masks: in the second, each
train mask's pixels are permuted, so every image keeps exactly the classes it had (its tags, which
come from the masks here) but no pixel sits where it did. The weak chain (manifest -> classifier ->
maps -> refiner -> refined maps -> a label round (labels, segmenter, its mined maps) -> pseudo
labels) may use the masks only to score itself, so its stored outputs must be identical byte for
byte while the metrics that score against masks differ. The random-walk refiner (pair labels from
the maps, the walk) runs the same check on the chain without a round.
"""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wsss.config.params import load
from wsss.dataset import demo, voc
from wsss.stores import labelstore, mapstore
from tests.conftest import REPO
from tests.test_pipeline_dvc import SMALL

CHAIN = ["manifest", "train_classifier", "export_maps", "train_refiner", "export_refined", "label_round@r1",
         "pseudo_labels"]
SCORED = ["maps", "refined_maps", "rounds/r1/pseudo_labels", "pseudo_labels"]   # metrics/<name>.json scored
                                                                                # against the train masks
STORES = ["maps", "refined_maps", "rounds/r1/pseudo_labels", "rounds/r1/maps", "pseudo_labels"]


def scramble_train_masks(root, seed: int = 1) -> None:
    """Permute the pixels of every train mask: the same multiset of labels (so the same tags), new places."""
    rng = np.random.default_rng(seed)
    for image_id in voc.read_split(root, "train"):
        path = voc.mask_path(root, image_id)
        with Image.open(path) as img:
            mask, pal = np.array(img), img.getpalette()
        scrambled = rng.permutation(mask.reshape(-1)).reshape(mask.shape)
        assert voc.tags_from_mask(scrambled) == voc.tags_from_mask(mask)
        assert (scrambled != mask).mean() > 0.2
        png = Image.fromarray(scrambled, mode="P")
        png.putpalette(pal)
        png.save(path)


# The random-walk refiner's chain: maps -> affinity network -> walked maps -> pseudo labels.
WALK = {"chain": [s for s in CHAIN if not s.startswith("label_round")],
        "scored": ["maps", "refined_maps", "pseudo_labels"], "stores": ["maps", "refined_maps", "pseudo_labels"],
        "set": ["refiner.method=random_walk", "refiner.affinity.feature_dim=8", "refiner.affinity.radius=2",
                "refiner.affinity.steps=4",   # a short walk on the 8 x 8 grid: a longer one flattens the maps
                "refiner.affinity.fg_threshold=0.3", "rounds={}", "pseudo_labels.maps=artifacts/refined_maps"]}
ROUND = {"chain": CHAIN, "scored": SCORED, "stores": STORES,
         "set": ["rounds={r1: {maps: artifacts/refined_maps}}", "pseudo_labels.maps=artifacts/rounds/r1/maps"]}


def run_chain(work, root, monkeypatch, variant=ROUND) -> dict:
    import importlib

    work.mkdir()
    monkeypatch.chdir(work)   # stages read and write relative to the repository root (wsss/config/paths.py)
    params = load(REPO / "params.yaml", SMALL + [f"data.root={root}", "maps.n_overlays=0",
                                                 "pseudo_labels.n_samples=0", "pseudo_labels.workers=1",
                                                 *variant["set"]])
    for stage in variant["chain"]:
        name, _, key = stage.partition("@")
        main = importlib.import_module(f"tasks.{name}").main
        main(params, key) if key else main(params)
    return {name: json.loads((work / "metrics" / f"{name}.json").read_text()) for name in variant["scored"]}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [ROUND, WALK], ids=["regression+round", "random_walk"])
def test_scrambled_train_masks_change_scores_not_outputs(tmp_path, monkeypatch, variant):
    monkeypatch.setenv("WSSS_TRACKING", "off")
    clean, scrambled = tmp_path / "clean", tmp_path / "scrambled"
    demo.generate(clean, seed=0, n_train=6, n_val=3, image_size=64)
    shutil.copytree(clean, scrambled)
    scramble_train_masks(scrambled)

    metrics_a = run_chain(tmp_path / "run_clean", clean, monkeypatch, variant)
    metrics_b = run_chain(tmp_path / "run_scrambled", scrambled, monkeypatch, variant)
    a, b = tmp_path / "run_clean/artifacts", tmp_path / "run_scrambled/artifacts"

    # The manifest: same ids, tags and mask flags (only the recorded root differs).
    rows_a, rows_b = (voc.read_manifest(d / "manifest.parquet")[0].to_pylist() for d in (a, b))
    assert rows_a == rows_b

    for store in [s for s in ("maps", "refined_maps", "rounds/r1/maps") if s in variant["stores"]]:
        stored_a, stored_b = list(mapstore.read(a / store, as_uint8=True)), list(mapstore.read(b / store, as_uint8=True))
        assert [(i, c) for i, c, _ in stored_a] == [(i, c) for i, c, _ in stored_b]
        for (image_id, _, ma), (_, _, mb) in zip(stored_a, stored_b):
            assert np.array_equal(ma, mb), f"{store} of {image_id} depend on the train masks"
    for store in [s for s in ("rounds/r1/pseudo_labels", "pseudo_labels") if s in variant["stores"]]:
        labels_a, labels_b = labelstore.read_dict(a / store), labelstore.read_dict(b / store)
        assert list(labels_a) == list(labels_b)
        for image_id in labels_a:
            assert np.array_equal(labels_a[image_id], labels_b[image_id]), f"{store} of {image_id} depend on the masks"
    # The shards themselves, byte for byte (the Parquet files hold no path or time).
    for store in variant["stores"]:
        files = sorted(p.name for p in (a / store).iterdir())
        assert files == sorted(p.name for p in (b / store).iterdir())
        for name in files:
            assert (a / store / name).read_bytes() == (b / store / name).read_bytes(), f"{store}/{name} differs"

    # ...while everything scored against the train masks sees the scramble.
    for name in variant["scored"]:
        # (Only "differ": on six 64-px images after one epoch the clean scores are low enough that a
        # scrambled mask can score a little higher, e.g. refined maps 17.24 vs 16.55.)
        assert metrics_a[name]["miou"] != metrics_b[name]["miou"], f"{name}: the scores ignore the masks"
        assert metrics_a[name]["per_class_iou"] != metrics_b[name]["per_class_iou"], name
