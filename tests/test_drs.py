from pathlib import Path

import pytest
import torch

from models.classifier import CAMClassifier
from models.drs import FixedDRS, LearnableDRS, Placement, make_drs


def test_fixed_drs_clamps_each_channel_at_delta_times_its_max():
    x = torch.tensor([[[[1.0, -2.0], [4.0, 2.0]], [[0.5, 0.1], [0.2, 0.0]]]])
    out = FixedDRS(0.5)(x)
    expected = torch.tensor([[[[1.0, 0.0], [2.0, 2.0]], [[0.25, 0.1], [0.2, 0.0]]]])
    torch.testing.assert_close(out, expected)


def test_fixed_drs_delta_one_is_plain_relu():
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(FixedDRS(1.0)(x), torch.relu(x))


def test_learnable_controller_starts_at_half_and_learns():
    drs = LearnableDRS(4)
    x = torch.rand(2, 4, 6, 6) + 0.1
    out = drs(x)
    assert torch.allclose(drs.last_delta, torch.full_like(drs.last_delta, 0.5))
    torch.testing.assert_close(out, torch.minimum(x, 0.5 * x.amax(dim=(2, 3), keepdim=True)))
    (-out.sum()).backward()  # a loss that rewards larger activations, i.e. less suppression
    assert drs.fc.weight.grad is not None and drs.fc.weight.grad.abs().sum() > 0
    assert drs.fc.bias.grad.abs().sum() > 0
    opt = torch.optim.SGD(drs.parameters(), lr=0.01)
    opt.step()
    drs(x)
    assert drs.last_delta.mean() > 0.5


def test_make_drs_modes():
    assert isinstance(make_drs("none", 8), torch.nn.Identity)
    assert isinstance(make_drs("fixed", 8, 0.3), FixedDRS)
    assert isinstance(make_drs("learnable", 8), LearnableDRS)
    with pytest.raises(ValueError):
        make_drs("other", 8)


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("placement, expected", [
    (("extra",), 3), (("head",), 1), (("blocks:2",), 4), (("extra", "head"), 4),
])
def test_placement_on_lite0(placement, expected):
    model = CAMClassifier(5, pretrained=False, extra_convs=3, extra_channels=16,
                          drs_mode="fixed", drs_placement=placement)
    assert _count(model, FixedDRS) == expected


def test_plain_cam_has_no_drs():
    model = CAMClassifier(5, pretrained=False, extra_convs=3, extra_channels=16, drs_mode="none")
    assert _count(model, FixedDRS) + _count(model, LearnableDRS) == 0


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_lite0_output_stride(output_stride):
    model = CAMClassifier(5, pretrained=False, output_stride=output_stride, extra_convs=1, extra_channels=8)
    logits, maps = model(torch.rand(1, 3, 64, 64) * 255)
    assert logits.shape == (1, 5)
    assert maps.shape[-1] == 64 // output_stride


def test_paper_vgg16_layout():
    model = CAMClassifier(20, backbone="vgg16", pretrained=False, output_stride=8, extra_convs=3,
                          extra_channels=512, drs_mode="learnable", drs_placement=("all",))
    # DRS after all 13 backbone ReLUs and the 3 extra ones; no pool5; pool4 at stride 1.
    assert _count(model, LearnableDRS) == 16
    pools = [m for m in model.backbone.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4 and pools[-1].stride == 1
    _, maps = model(torch.rand(1, 3, 64, 64) * 255)
    assert maps.shape[-2:] == (8, 8)


def test_resnet50_blocks_placement():
    model = CAMClassifier(3, backbone="resnet50", pretrained=False, output_stride=16, extra_convs=0,
                          drs_mode="fixed", drs_placement=("blocks:3",))
    assert _count(model, FixedDRS) == 3
    _, maps = model(torch.rand(1, 3, 64, 64) * 255)
    assert maps.shape[-2:] == (4, 4)


def test_torchvision_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        CAMClassifier(3, backbone="vgg16", pretrained=True, output_stride=8)


def test_placement_parsing():
    p = Placement(["blocks:3", "extra"])
    assert p.extra and not p.head and p.in_block(9, 10) and p.in_block(7, 10) and not p.in_block(6, 10)
    assert Placement(["all"]).head and Placement(["all"]).in_block(0, 10)


@pytest.mark.parametrize("backbone, n, stride", [("efficientnet_lite0", 5, 16), ("vgg16", 4, 8), ("resnet50", 3, 16)])
def test_freeze_prefix_stops_gradients_in_early_layers(backbone, n, stride):
    from models.backbones import freeze_prefix

    model = CAMClassifier(3, backbone=backbone, pretrained=False, output_stride=stride, extra_convs=0)
    frozen = freeze_prefix(model.backbone, n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert frozen > 0 and trainable
    model(torch.rand(1, 3, 64, 64) * 255)[0].sum().backward()
    first = next(model.backbone.parameters())
    assert first.grad is None and all(p.grad is not None for p in model.classifier.parameters())
    assert freeze_prefix(CAMClassifier(3, pretrained=False, extra_convs=0).backbone, 0) == 0


def test_refiner_head_is_picked_by_params_and_survives_a_checkpoint(tmp_path):
    from models.classifier import ASPPLocalizer, build_localizer
    from wsss.config.params import load
    from models.networks import to_config
    from wsss.training import checkpoints

    params = load(Path(__file__).resolve().parent.parent / "params.yaml", ["refiner.head=aspp", "refiner.pretrained=false", "refiner.aspp_channels=8"])
    cfg = params["refiner"]
    model = build_localizer(cfg, 5)
    assert isinstance(model, ASPPLocalizer)
    logits, maps = model(torch.rand(1, 3, 64, 64) * 255)
    assert logits.shape == (1, 5) and maps.shape == (1, 5, 4, 4)
    assert isinstance(build_localizer(params["classifier"], 5), CAMClassifier)

    checkpoints.save(tmp_path / "refiner.pt", model, to_config("localizer", cfg, [f"c{i}" for i in range(6)]))
    loaded, config = checkpoints.load(tmp_path / "refiner.pt", torch.device("cpu"))
    assert config["kind"] == "localizer" and "drs" not in config["network"]  # no fake DRS section
    x = torch.rand(1, 3, 64, 64) * 255
    torch.testing.assert_close(loaded(x)[1], model.eval()(x)[1])
    with pytest.raises(KeyError, match="refiner.head"):
        build_localizer({**cfg, "head": "nope"}, 5)


def test_extra_kernel_one_adds_no_spatial_mixing():
    model = CAMClassifier(5, pretrained=False, extra_convs=3, extra_channels=16, extra_kernel=1,
                          drs_mode="learnable", drs_placement=("extra",))
    convs = [m for m in model.extra if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 3
    assert _count(model, LearnableDRS) == 3
    assert model(torch.rand(1, 3, 64, 64) * 255)[1].shape == (1, 5, 4, 4)


def test_checkpoints_saved_before_the_kind_field_still_load(tmp_path):
    """Old checkpoints stored {"classifier": section} / {"segmenter": section}; they load unchanged."""
    from wsss.config.params import load
    from models.classifier import build_localizer
    from models.segmenter import build_segmenter
    from wsss.training import checkpoints

    params = load(Path(__file__).resolve().parent.parent / "params.yaml",
                  ["classifier.pretrained=false", "segmenter.pretrained=false", "segmenter.aspp_channels=8"])
    classes = ["background", "a", "b"]
    x = torch.rand(1, 3, 64, 64) * 255
    for key, model in (("classifier", build_localizer(params["classifier"], 2)),
                       ("segmenter", build_segmenter(params["segmenter"], 3))):
        torch.save({"state_dict": model.state_dict(), "config": {key: params[key], "classes": classes}},
                   tmp_path / f"{key}.pt")
        loaded, config = checkpoints.load(tmp_path / f"{key}.pt", torch.device("cpu"))
        assert config["kind"] == {"classifier": "localizer", "segmenter": "segmenter"}[key]
        out, ref = loaded(x), model.eval()(x)
        torch.testing.assert_close(out[1] if key == "classifier" else out, ref[1] if key == "classifier" else ref)
