"""Self-training rounds of the semi segmenter (semi.rounds, wsss/semi/rounds.py): the new labels keep only
the image's tags, a later round trains on them instead of the pseudo labels, and no mask beyond the
listed ones is read."""
import numpy as np
import pytest

from wsss.config.params import ParamsError, load
from wsss.dataset import voc
from wsss.semi import masks as semi_masks
from wsss.semi import rounds, stage
from tasks import train_semi
from tests.conftest import REPO
from tests.test_semi import workspace

CRF = {"iterations": 2, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 50, "bilateral_srgb": 5,
       "bilateral_compat": 10}


@pytest.mark.parametrize("crf", [None, CRF])
def test_new_labels_keep_only_background_and_the_tags(crf):
    rng = np.random.default_rng(0)
    probs = rng.random((5, 12, 16)).astype(np.float32)
    probs[3] += 2.0                  # class 3 would win everywhere, but the image is tagged 1 and 4
    probs /= probs.sum(0, keepdims=True)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    out = rounds.tag_labels(image, probs, [4, 1], crf)
    assert out.dtype == np.uint8 and out.shape == (12, 16)
    assert set(np.unique(out)) <= {0, 1, 4} and 3 not in out
    if crf is None:   # without the CRF: the argmax among the kept classes
        kept = probs[[0, 1, 4]]
        np.testing.assert_array_equal(out, np.array([0, 1, 4])[kept.argmax(0)])


def test_rounds_need_labels_to_read():
    assert load(REPO / "params.yaml")["semi"]["rounds"] == 1   # the shipped default: one round, as before
    with pytest.raises(ParamsError, match=r"semi\.rounds: is 2, but with masks_only"):
        load(REPO / "params.yaml", ["semi.rounds=2", "semi.method=masks_only"])
    with pytest.raises(ParamsError, match=r"semi\.rounds: 0 is below the minimum 1"):
        load(REPO / "params.yaml", ["semi.rounds=0"])
    with pytest.raises(ParamsError, match=r"semi\.relabel_weight: is 0, but semi\.rounds 2"):
        load(REPO / "params.yaml", ["semi.rounds=2", "semi.relabel_weight=0"])
    load(REPO / "params.yaml", ["semi.relabel_weight=0"])   # one round relabels nothing: the weight is unused


def test_a_second_round_trains_on_the_first_rounds_labels(tmp_path, voc_fixture, monkeypatch):
    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = workspace(tmp_path, voc_fixture, monkeypatch, ["semi.method=masks+pseudo", "semi.rounds=2",
                                                            "semi.relabel_crf=true", "semi.relabel_weight=0.5"])
    seen, read, weights = [], [], []
    real_round, real_mask = stage.fit_round, voc.load_mask
    monkeypatch.setattr(stage, "fit_round", lambda semi, masked, cfg, root, ids, labels, *a, **k:
                        seen.append(labels) or weights.append(semi["pseudo_weight"])
                        or real_round(semi, masked, cfg, root, ids, labels, *a, **k))
    monkeypatch.setattr(voc, "load_mask", lambda root, i, n: read.append(i) or real_mask(root, i, n))
    result = train_semi.main(params)

    listed = semi_masks.read_ids(tmp_path / "artifacts/semi/masked_ids.txt")
    train = voc.read_split(voc_fixture, "train")
    unmasked = [i for i in train if i not in listed]
    assert len(seen) == 2 and result["rounds"] == 2 and len(result["round_final_losses"]) == 2
    assert weights == [0.1, 0.5]                                   # semi.relabel_weight weighs round 2's labels
    assert (result["pseudo_weight"], result["relabel_weight"]) == (0.1, 0.5)
    assert {i for i in read if i in train} == set(listed)          # relabelling reads no mask
    first, second = seen
    assert second.pseudo is not first.pseudo and sorted(second.pseudo) == sorted(unmasked)
    table, _, _ = voc.read_manifest(tmp_path / "artifacts/manifest.parquet")
    tags = {r["id"]: set(r["tags"]) for r in voc.split_rows(table, "train")}
    for image_id in unmasked:
        new = second(image_id)
        assert new.shape == first(image_id).shape
        assert set(np.unique(new)) <= {0} | tags[image_id]
    for image_id in listed:                                        # masked images keep their masks
        np.testing.assert_array_equal(second(image_id), first(image_id))
