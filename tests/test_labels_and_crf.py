import numpy as np
import pytest
from PIL import Image

from wsss.labelling import crf as crf_module
from wsss.labelling.crf import crf_argmax, dense_crf
from wsss.config.params import DEFAULTS
from wsss.labelling.pseudo import label_image, make_labels
from wsss.localization.refinement import refinement_target

CRF = {"iterations": 10, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 20, "bilateral_srgb": 10,
       "bilateral_compat": 10}
CFG = {"bg_threshold": 0.4, "temperature": 0.1, "uncertain_margin": 0.05, "saliency_dir": "",
       "saliency_threshold": 0.5, "claim_threshold": 0.5, "crf": CRF}


def test_crf_snaps_a_blurry_boundary_to_the_image_edge():
    h, w, edge = 24, 48, 20
    image = np.zeros((h, w, 3), np.uint8)
    image[:, edge:] = 255
    x = np.arange(w, dtype=np.float32)
    fg = np.tile(1 / (1 + np.exp(-(x - 27) / 4)), (h, 1))  # the maps put the boundary 7 px too far right
    probs = np.stack([1 - fg, fg])
    truth = np.tile(x >= edge, (h, 1))
    before = (probs.argmax(0) != truth).mean()
    after = (dense_crf(image, probs, CRF).argmax(0) != truth).mean()
    assert before > 0.1 and after < before / 2


def test_the_stage_labels_stop_background_at_a_textured_object_edge(tmp_path):
    """label_image, the pseudo_labels stage's unit of work, with the shipped settings but superpixels off
    (their vote snaps to edges too and would hide a skipped CRF). The maps put the object's boundary
    7 px right of the image edge; the labels' background must stop at the edge, which only the CRF
    finds (it claims the band for the object; 255 there, where it overrules the maps)."""
    h, w, edge = 32, 48, 20
    rng = np.random.default_rng(0)
    image = np.where(np.arange(w)[None, :, None] < edge, 60, 190) + rng.integers(-25, 26, (h, w, 3))
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(image.astype(np.uint8)).save(tmp_path / "JPEGImages" / "a.jpg", quality=95)
    fg = 1 / (1 + np.exp(-(np.arange(w) - 27) / 3))
    maps = np.tile(fg * 255, (1, h, 1)).round().astype(np.uint8)
    shipped = DEFAULTS["pseudo_labels"]
    cfg = {**shipped, "superpixels": {**shipped["superpixels"], "enabled": False}}
    labels = label_image((str(tmp_path), "a", [5], maps, cfg, False, 21))[1]
    first = (labels != 0).argmax(1)
    assert (first == edge).all(), f"background stops at columns {sorted(set(first.tolist()))}, not at the edge {edge}"
    assert (labels[:, edge:] != 0).all() and (labels[:, 30:] == 5).all()


def _three_class_probs():
    """Class 0 left, class 2 right, class 1 never above 0.02: the CRF can leave it out."""
    h, w = 24, 48
    x = np.arange(w, dtype=np.float32)
    right = np.tile(1 / (1 + np.exp(-(x - 27) / 4)), (h, 1)) * 0.98
    probs = np.stack([0.98 - right, np.full((h, w), 0.02, np.float32), right]).astype(np.float32)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 20:] = 255
    return image, probs


def test_crf_argmax_leaves_out_hopeless_classes_and_maps_indices_back(monkeypatch):
    image, probs = _three_class_probs()
    full = dense_crf(image, probs, CRF).argmax(0)
    seen = []
    real = crf_module.dense_crf
    monkeypatch.setattr(crf_module, "dense_crf", lambda im, p, cfg: seen.append(len(p)) or real(im, p, cfg))
    pruned = crf_argmax(image, probs, {**CRF, "min_prob": 0.05})
    assert seen == [2]                       # class 1 was left out of the CRF
    assert set(np.unique(pruned)) == {0, 2}  # and the kept channels map back to their class ids
    assert (pruned == full).mean() > 0.99
    np.testing.assert_array_equal(crf_argmax(image, probs, CRF), full)  # min_prob absent: all classes


def test_crf_argmax_skips_the_crf_when_one_class_is_left(monkeypatch):
    image, probs = _three_class_probs()
    probs = np.stack([np.full_like(probs[0], 0.96), probs[1], np.full_like(probs[0], 0.02)])
    monkeypatch.setattr(crf_module, "dense_crf", lambda *a: pytest.fail("CRF ran with one class"))
    assert (crf_argmax(image, probs, {**CRF, "min_prob": 0.05}) == 0).all()


def _flat_image(h=16, w=16):
    return np.full((h, w, 3), 128, np.uint8)


def test_threshold_rule_and_uncertain_band():
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, :, :6] = 0.9      # clearly class 7
    maps[0, :, 6:10] = 0.42   # within the margin of the 0.4 background cue
    labels = make_labels(_flat_image(), maps, [7], CFG)
    assert (labels[:, :6] == 7).all()
    assert (labels[:, 6:10] == 255).all()
    assert (labels[:, 10:] == 0).all()


def test_saliency_rules_conflicts_and_salient_background():
    saliency = np.zeros((16, 16), np.float32)
    saliency[:, :8] = 1.0
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, :, :4] = 0.9                # class 3 alone on salient pixels
    maps[1, 4:8, :4] = 0.8              # class 5 also claims rows 4..7: conflict
    labels = make_labels(_flat_image(), maps, [3, 5], {**CFG, "saliency_dir": "x"}, saliency)
    assert (labels[:4, :4] == 3).all() and (labels[8:, :4] == 3).all()
    assert (labels[4:8, :4] == 255).all()          # two classes claim it
    assert (labels[:, 4:8] == 255).all()           # salient but nothing claims it: background -> 255
    assert (labels[:, 8:] == 0).all()              # not salient: background


def test_image_without_tags_is_all_background():
    assert (make_labels(_flat_image(), np.zeros((0, 16, 16), np.float32), [], CFG) == 0).all()


def test_refinement_target_keeps_only_the_argmax_class():
    maps = np.array([[[0.9, 0.2]], [[0.3, 0.6]]], np.float32)  # 2 classes, 1 x 2 pixels
    target = refinement_target(maps, [2, 4], n_fg=5)
    assert target.shape == (5, 1, 2)
    np.testing.assert_allclose(target[1], [[0.9, 0.0]])
    np.testing.assert_allclose(target[3], [[0.0, 0.6]])
    assert target[[0, 2, 4]].sum() == 0
