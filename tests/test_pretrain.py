"""Self-supervised pretraining (the pretrain stage, SimCLR): its steps reduce the loss, the learned
embedding is not constant and a constant one is flagged, the classifier starts from the saved
backbone, and the disabled stage writes its note."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.config.params import load
from wsss.localization.classification import build_classifier
from models.backbones import build_backbone
from wsss.pretraining import backbone as weights
from wsss.pretraining import simclr
from tests.conftest import REPO


def gratings(root, n: int = 10, size: int = 48) -> list[str]:
    """n grey sine gratings, each its own orientation and frequency: structure that survives SimCLR's
    crops and colour changes, so two views of one image can be matched (colour alone cannot)."""
    (root / "JPEGImages").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ids = [f"im{i}" for i in range(n)]
    for i, (angle, freq) in enumerate(zip([0, 30, 60, 90, 0, 30, 60, 90, 45, 135], [2, 2, 2, 2, 7, 7, 7, 7, 4, 4])):
        th = np.deg2rad(angle)
        v = 127.5 + 127.5 * np.sin(2 * np.pi * freq * (xx * np.cos(th) + yy * np.sin(th)))
        Image.fromarray(np.repeat(v[..., None], 3, -1).astype(np.uint8)).save(root / "JPEGImages" / f"{ids[i]}.jpg",
                                                                               quality=95)
    return ids


def cfg(**over) -> dict:
    base = load(REPO / "params.yaml", ["pretrain.enabled=true"])["pretrain"]
    return {**base, "start": "scratch", "image_size": 32, "device": "cpu", **over}


def test_simclr_steps_reduce_the_loss_and_the_embedding_is_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_TRACKING", "off")
    torch.set_num_threads(1)
    ids = gratings(tmp_path / "data")   # 2 held, 8 trained: one batch of 8 per epoch, so one step each
    metrics, history = simclr.pretrain(cfg(epochs=30, batch_size=8, lr=0.002, start="imagenet"), ids,
                                       tmp_path / "data", tmp_path / "backbone.pt")
    losses = [h["loss"] for h in history]   # chance: log(15) = 2.71; seeds 0-4 dropped 1.1-1.6
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert metrics["n_held"] == 2 and metrics["n_train"] == 8
    assert not metrics["collapsed"] and metrics["embedding_spread"] > 2 * simclr.COLLAPSE_SPREAD, metrics
    assert metrics["embedding_std"] > 0.001
    assert (tmp_path / "backbone.pt").is_file()


def test_the_collapse_check_flags_a_constant_embedding():
    constant = simclr.spread(torch.full((16, 64), 3.0))
    assert constant["collapsed"] and constant["embedding_std"] == 0.0
    with pytest.warns(UserWarning, match="collapsed"):
        simclr.warn_if_collapsed(constant)
    spread_out = simclr.spread(torch.randn(256, 64, generator=torch.Generator().manual_seed(0)))
    assert not spread_out["collapsed"] and 0.9 < spread_out["embedding_spread"] < 1.05
    assert spread_out["embedding_std"] == pytest.approx(64 ** -0.5, rel=0.1)
    nearly = simclr.spread(torch.full((16, 64), 3.0) + 0.01 * torch.randn(16, 64))   # almost one vector
    assert nearly["collapsed"] and nearly["embedding_std"] > 0


def test_nt_xent_is_low_when_views_match_and_chance_when_collapsed():
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) * 10
    assert simclr.nt_xent(z, z, 0.1) < 0.01
    assert simclr.nt_xent(torch.ones(8, 16), torch.ones(8, 16), 0.2) == pytest.approx(np.log(15), abs=1e-5)


def test_disabled_stage_writes_its_note_and_the_classifier_refuses_to_start_from_it(tmp_path, monkeypatch):
    from tasks import pretrain
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSSS_TRACKING", "off")
    assert pretrain.main(load(REPO / "params.yaml")) == {"enabled": False}
    assert "nothing trained" in (tmp_path / "artifacts/pretrain/NOTE.txt").read_text()
    assert not (tmp_path / "artifacts/pretrain/backbone.pt").exists()
    assert json.loads((tmp_path / "metrics/pretrain.json").read_text()) == {"enabled": False}
    assert (tmp_path / "plots/pretrain_train.csv").read_text() == "epoch,loss,seconds\n"
    classifier = load(REPO / "params.yaml", ["classifier.init=pretrain", "classifier.pretrained=false"])["classifier"]
    with pytest.raises(weights.PretrainError, match="classifier.init: pretrain needs .*pretrain.enabled: true"):
        build_classifier(classifier, 2, tmp_path / "artifacts/pretrain/backbone.pt")


def test_the_stage_pretrains_and_the_classifier_starts_from_its_backbone(voc_fixture, tmp_path, monkeypatch):
    from tasks import manifest, pretrain
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = load(REPO / "params.yaml", [f"data.root={voc_fixture}", "pretrain.enabled=true", "pretrain.start=imagenet",
                                         "pretrain.epochs=1", "pretrain.batch_size=2", "pretrain.image_size=32",
                                         "classifier.init=pretrain", "classifier.pretrained=false"])
    manifest.main(params)
    metrics = pretrain.main(params)
    assert metrics["n_train"] + metrics["n_held"] == 6   # train and val images, every one
    assert {"embedding_std", "final_loss", "held_loss"} <= set(json.loads((tmp_path / "metrics/pretrain.json").read_text()))
    assert (tmp_path / "plots/pretrain_train.csv").read_text().startswith("epoch,loss,seconds\n1,")
    saved = torch.load(tmp_path / "artifacts/pretrain/backbone.pt", weights_only=True)["state_dict"]
    model = build_classifier(params["classifier"], 2)
    own = model.backbone.state_dict()
    assert set(saved) == set(own) and all(torch.equal(saved[k], own[k]) for k in saved)
    fresh = build_classifier({**params["classifier"], "init": "imagenet"}, 2).backbone.state_dict()
    assert any(not torch.equal(fresh[k], own[k]) for k in own if own[k].is_floating_point())


def test_a_backbone_of_another_kind_is_refused(tmp_path):
    torch.manual_seed(0)
    lite = build_backbone("efficientnet_lite0", pretrained=False, output_stride=32)
    weights.save(tmp_path / "b.pt", lite, {"backbone": "efficientnet_lite0"})
    with pytest.raises(weights.PretrainError, match="holds a efficientnet_lite0 backbone, this network's is resnet50"):
        weights.load_into(lite, "resnet50", tmp_path / "b.pt", "classifier.init")
    other = build_backbone("efficientnet_lite0", pretrained=False, output_stride=16)   # stride: same weights
    weights.load_into(other, "efficientnet_lite0", tmp_path / "b.pt", "classifier.init")
    assert all(torch.equal(a, b) for a, b in zip(lite.state_dict().values(), other.state_dict().values()))


def test_the_segmenter_starts_from_the_pretrained_backbone_with_a_fresh_head(tmp_path):
    from wsss.training.segmentation import initial_segmenter
    torch.manual_seed(0)
    saved = build_backbone("efficientnet_lite0", pretrained=False, output_stride=32)
    weights.save(tmp_path / "b.pt", saved, {"backbone": "efficientnet_lite0"})
    seg = load(REPO / "params.yaml", ["segmenter.init=pretrain", "segmenter.aspp_channels=8"])["segmenter"]
    model = initial_segmenter(seg, 3, backbone_from=tmp_path / "b.pt")
    own = model.backbone.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in saved.state_dict().items())
