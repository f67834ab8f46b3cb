"""Label rounds (Wang et al., CVPR 2018): the bottom-up mining, the maps' own background cue,
the params chain, and how the foreach stage is named and expanded."""
import numpy as np
import pytest
import yaml

from wsss.config.params import ParamsError, load
from wsss.labelling import mining
from wsss.labelling.pseudo import make_labels
from tests.conftest import REPO
from wsss.tracking import lineage

ROUND = ["rounds={r1: {maps: artifacts/refined_maps}, r2: {maps: artifacts/rounds/r1/maps}}",
         "pseudo_labels.maps=artifacts/rounds/r2/maps"]


def test_restrict_keeps_background_and_tags_and_renormalises():
    probs = np.zeros((5, 2, 2), np.float32)
    probs[0], probs[2], probs[4] = 0.2, 0.3, 0.5     # class 4 is not a tag
    out = mining.restrict(probs, [2])
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], [0.4, 0.6], atol=1e-6)


def test_prototypes_use_confident_pixels_only():
    feats = np.zeros((2, 1, 3), np.float32)
    feats[:, 0, 0], feats[:, 0, 1], feats[:, 0, 2] = [1, 0], [0, 1], [1, 1]
    probs = np.array([[[0.05, 0.9, 0.45]], [[0.95, 0.1, 0.55]]], np.float32)   # background, class 3
    protos = mining.Prototypes(4, 2)
    protos.add(feats, probs, [3], confidence=0.8)
    vectors = protos.vectors()
    np.testing.assert_allclose(vectors[3], [1, 0], atol=1e-6)   # pixel 0 only; pixel 2 (0.55) is not confident
    np.testing.assert_allclose(vectors[0], [0, 1], atol=1e-6)
    assert not vectors[1].any() and protos.counts.tolist() == [1, 0, 0, 1]


def test_expansion_raises_a_missed_region_that_looks_like_the_class():
    """Pixel 1 looks like class 3's prototype but the segmenter gave it background: mining lifts it."""
    prototypes = np.zeros((4, 2), np.float32)
    prototypes[0], prototypes[3] = [0, 1], [1, 0]
    feats = np.array([[[1.0, 1.0]], [[0.0, 0.05]]], np.float32)
    probs = np.array([[[0.1, 0.7]], [[0.9, 0.3]]], np.float32)
    similar = mining.similarity(feats, prototypes, [3], temperature=0.1)
    mined = mining.expand(probs, similar, weight=0.5)
    assert probs[:, 0, 1].argmax() == 0 and mined[:, 0, 1].argmax() == 1
    np.testing.assert_allclose(mined.sum(0), 1.0, atol=1e-6)
    # weight 0: the segmenter's probabilities unchanged
    np.testing.assert_allclose(mining.expand(probs, similar, 0.0), probs, atol=1e-6)


def test_an_image_with_a_class_without_prototype_keeps_its_probabilities():
    prototypes = np.zeros((4, 2), np.float32)
    prototypes[0] = [0, 1]
    similar = mining.similarity(np.ones((2, 1, 1), np.float32), prototypes, [3], 0.1)
    assert np.isnan(similar).all()
    probs = np.array([[[0.4]], [[0.6]]], np.float32)
    np.testing.assert_allclose(mining.expand(probs, similar, 0.5), probs, atol=1e-6)


def test_bayes_saliency_prior():
    maps = np.full((2, 1, 2), 0.5, np.float32)
    post = mining.bayes(maps, np.array([[0.0, 0.9]], np.float32))
    np.testing.assert_allclose(post[:, 0, 0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(post[:, 0, 1], [0.1, 0.9], atol=1e-6)


def test_labels_use_the_maps_own_background():
    cfg = load(REPO / "params.yaml")["pseudo_labels"]
    image = np.full((8, 8, 3), 128, np.uint8)
    maps = np.full((1, 8, 8), 0.6, np.float32)            # above bg_threshold 0.45 everywhere
    background = np.zeros((8, 8), np.float32)
    background[:, :4] = 0.9                               # but the round says: left half is background
    assert (make_labels(image, maps, [5], cfg) == 5).all()
    labels = make_labels(image, maps, [5], cfg, background=background)
    assert (labels[:, :4] == 0).all() and (labels[:, 4:] == 5).all()


def test_round_chain_is_checked():
    params = load(REPO / "params.yaml", ROUND)
    assert list(params["rounds"]) == ["r1", "r2"] and params["rounds"]["r2"]["epochs"] == 0
    with pytest.raises(ParamsError, match=r"pseudo_labels.maps: .*artifacts/rounds/r2/maps"):
        load(REPO / "params.yaml", ROUND[:1])
    with pytest.raises(ParamsError, match=r"rounds.r2.maps: .*artifacts/rounds/r1/maps"):
        load(REPO / "params.yaml", ["rounds={r1: {maps: artifacts/maps}, r2: {maps: artifacts/maps}}",
                                     "pseudo_labels.maps=artifacts/rounds/r2/maps"])
    with pytest.raises(ParamsError, match="round 1 must be called r1"):
        load(REPO / "params.yaml", ["rounds={first: {maps: artifacts/maps}}"])
    with pytest.raises(ParamsError, match=r"rounds.r1.epoch: unknown key"):
        load(REPO / "params.yaml", ["rounds={r1: {maps: artifacts/maps, epoch: 3}}"])


def test_rounds_are_replaced_whole_not_merged(tmp_path):
    """Removing a round from params.yaml removes it (a named mapping is not merged with the defaults)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["rounds"], raw["pseudo_labels"]["maps"] = {}, "artifacts/maps"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load(tmp_path / "params.yaml")["rounds"] == {}


def test_foreach_stage_expands_in_order_with_its_item_filled_in():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = load(REPO / "params.yaml", ROUND)
    names = lineage.expand_names(dvc_yaml, params)
    assert names.index("export_refined") < names.index("label_round@r1") < names.index("label_round@r2") \
        < names.index("pseudo_labels")
    spec = lineage.stage_spec(dvc_yaml, "label_round@r2", params)
    assert "artifacts/rounds/r1/maps" in spec["deps"] and "artifacts/rounds/r2/maps" in spec["outs"]
    assert spec["cmd"] == "python -m tasks label_round@r2" and "rounds.r2" in spec["params"]
    no_rounds = load(REPO / "params.yaml", ["rounds={}", "pseudo_labels.maps=artifacts/refined_maps"])
    assert not any(n.startswith("label_round") for n in lineage.expand_names(dvc_yaml, no_rounds))


def test_cli_names_foreach_items(capsys):
    from tasks.__main__ import main
    assert main(["label_round", "--set", ROUND[0], "--set", ROUND[1]]) == 2
    assert "label_round@r1, label_round@r2" in capsys.readouterr().err
    assert main(["pseudo_labels@r1"]) == 2
    assert "runs once" in capsys.readouterr().err


def test_the_old_source_key_says_what_replaced_it():
    with pytest.raises(ParamsError, match="pseudo_labels.source: replaced by pseudo_labels.maps"):
        load(REPO / "params.yaml", ["pseudo_labels.source=raw"])


@pytest.mark.parametrize("vote", [False, True])
def test_a_round_labels_with_superpixels_only_when_it_says_so(monkeypatch, vote):
    """rounds.<key>.superpixels decides the round's labels; pseudo_labels.superpixels.enabled is the last labels'."""
    from tasks import label_round
    seen = {}

    class Stop(Exception):
        pass

    def fake_label_all(params, maps_dir, out_dir, name, extra=None):
        seen.update(enabled=params["pseudo_labels"]["superpixels"]["enabled"], maps=maps_dir, name=name)
        raise Stop

    monkeypatch.setattr(label_round, "label_all", fake_label_all)
    params = load(REPO / "params.yaml", [f"rounds.r1.superpixels={str(vote).lower()}",
                                         f"pseudo_labels.superpixels.enabled={str(not vote).lower()}"])
    with pytest.raises(Stop):
        label_round.main(params, "r1")
    assert seen == {"enabled": vote, "maps": "artifacts/refined_maps", "name": "rounds/r1/pseudo_labels"}
    assert params["pseudo_labels"]["superpixels"]["enabled"] is (not vote)   # the caller's params untouched


def test_a_dotted_override_edits_one_round_and_keeps_the_rest():
    params = load(REPO / "params.yaml", ROUND + ["rounds.r2.epochs=3"])
    assert params["rounds"]["r2"]["epochs"] == 3 and params["rounds"]["r2"]["maps"] == "artifacts/rounds/r1/maps"
    assert list(params["rounds"]) == ["r1", "r2"]
    assert load(REPO / "params.yaml", ["rounds.r1.flip=false"])["rounds"]["r1"]["maps"] == "artifacts/refined_maps"
