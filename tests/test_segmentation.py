import numpy as np
import pytest
import torch
from PIL import Image

from models.classifier import ASPPLocalizer
from models.segmenter import build_segmenter
from wsss.dataset import voc
from wsss.commands.predict import predict_folder
from models.networks import to_config
from wsss.training import checkpoints
from wsss.training.runtime import resolve_precision
from wsss.labelling.crf import dense_crf
from wsss.scoring.metrics import confusion
from wsss.training.segmentation import (evaluate, loss_grid, predict_probs, segmentation_loss, train,
                                warm_start)

CRF = {"iterations": 2, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 20, "bilateral_srgb": 10,
       "bilateral_compat": 5}
CFG = {"backbone": "efficientnet_lite0", "head": "aspp", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "val_flip": True, "val_scales": [1.0], "freeze_bn": True, "freeze_blocks": 3, "epochs": 2,
       "batch_size": 2, "crop_size": 32, "resize_long": [40, 56], "optimizer": "sgd", "lr_schedule": "poly",
       "lr_step_epochs": [1], "lr": 0.01, "new_layer_lr_mult": 10.0, "weight_decay": 0.0, "momentum": 0.9,
       "seed": 0, "device": "cpu", "precision": "fp32", "loss_stride": 1, "num_workers": 0, "crf": CRF}


@pytest.fixture
def trained(voc_fixture):
    classes = voc.read_classes(voc_fixture)
    ids = voc.read_split(voc_fixture, "train")

    def labels_for(image_id):
        return voc.load_mask(voc_fixture, image_id, len(classes))

    torch.manual_seed(0)
    model, history, batch = train(CFG, voc_fixture, ids, labels_for, len(classes), torch.device("cpu"), "test")
    assert batch == {"world_size": 1, "batch_per_rank": min(CFG["batch_size"], len(ids)),
                     "global_batch": min(CFG["batch_size"], len(ids))}   # one process: the whole batch
    return model, history, classes


def test_segmenter_trains_and_evaluates(voc_fixture, trained):
    model, history, classes = trained
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    rows = [{"id": i, "has_mask": True} for i in voc.read_split(voc_fixture, "val")]
    plain, with_crf, panels = evaluate(model, voc_fixture, rows, len(classes), CFG, torch.device("cpu"), samples=1)
    valid = sum(int((voc.load_mask(voc_fixture, r["id"], 3) != 255).sum()) for r in rows)
    assert plain.sum() == valid and with_crf.sum() == valid
    assert len(panels) == 1 and [t for t, _ in panels[0][2]] == ["prediction", "prediction + CRF"]
    assert panels[0][3].shape == (40, 50)  # the ground truth travels with the sample
    # the CRF runs in worker processes: same counts as running it here, image by image
    expected = np.zeros_like(with_crf)
    for r in rows:
        image, mask = voc.load_image(voc_fixture, r["id"]), voc.load_mask(voc_fixture, r["id"], 3)
        probs = predict_probs(model, image, torch.device("cpu"), CFG["val_flip"], CFG["val_scales"])
        expected += confusion(mask, dense_crf(image, probs, CRF).argmax(0).astype(np.uint8), 3)
    np.testing.assert_array_equal(with_crf, expected)


def test_evaluation_without_crf_scores_the_same_predictions_and_runs_no_crf(voc_fixture, trained, monkeypatch):
    model, _, classes = trained
    rows = [{"id": i, "has_mask": True} for i in voc.read_split(voc_fixture, "val")]
    cpu = torch.device("cpu")
    plain, _, _ = evaluate(model, voc_fixture, rows, len(classes), CFG, cpu)
    monkeypatch.setattr("wsss.training.segmentation.crf_labels", None)  # any CRF call would now fail
    plain_only, with_crf, panels = evaluate(model, voc_fixture, rows, len(classes), CFG, cpu, samples=1, crf=False)
    assert with_crf is None
    np.testing.assert_array_equal(plain_only, plain)
    assert [t for t, _ in panels[0][2]] == ["prediction"]  # image | prediction | ground truth


def test_predict_folder_writes_pngs_and_names_bad_files(voc_fixture, trained, tmp_path):
    model, _, classes = trained
    ckpt = tmp_path / "seg.pt"
    checkpoints.save(ckpt, model, to_config("segmenter", CFG, classes))
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a", "b"):
        Image.open(voc_fixture / "JPEGImages" / "tr0.jpg").save(inp / f"{name}.jpg")
    n = predict_folder(inp, tmp_path / "out", ckpt, "cpu", use_crf=True, crf_cfg=CRF)
    assert n == 2
    label = Image.open(tmp_path / "out/labels/a.png")
    assert label.mode == "P" and label.size == (50, 40) and np.array(label).max() < 3
    assert (tmp_path / "out/overlays/b.png").exists()
    (inp / "broken.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        predict_folder(inp, tmp_path / "out2", ckpt, "cpu")
    assert not (tmp_path / "out2").exists()  # nothing half-written


def test_multiscale_inference_keeps_the_image_size_and_averages_scales(voc_fixture, trained):
    model, _, _ = trained
    image = voc.load_image(voc_fixture, voc.read_split(voc_fixture, "val")[0])
    one = predict_probs(model, image, torch.device("cpu"), True, [1.0])
    multi = predict_probs(model, image, torch.device("cpu"), True, [0.75, 1.0, 1.5])
    assert one.shape == multi.shape == (3, *image.shape[:2])
    np.testing.assert_allclose(multi.sum(0), 1.0, rtol=1e-5)
    assert not np.allclose(one, multi)  # the other scales contribute


def test_bf16_inference_returns_float32_probabilities_close_to_float32(voc_fixture, trained):
    model, _, _ = trained
    image = voc.load_image(voc_fixture, voc.read_split(voc_fixture, "val")[0])
    full = predict_probs(model, image, torch.device("cpu"), True, [0.75, 1.0], "fp32")
    half = predict_probs(model, image, torch.device("cpu"), True, [0.75, 1.0], "bf16")
    assert half.dtype == np.float32
    np.testing.assert_allclose(half.sum(0), 1.0, rtol=1e-5)
    assert not np.array_equal(full, half)  # the convolutions did run in bfloat16
    assert np.abs(full - half).max() < 0.05


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    cpu = torch.device("cpu")
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert resolve_precision(cpu, "auto") == "fp32"
    assert resolve_precision(cpu, "bf16") == "bf16"  # asked for: emulated, slower, but honoured
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision(cpu, "auto") == "bf16"
    assert resolve_precision(cpu, "fp32") == "fp32"


def test_loss_grid_takes_the_centre_label_of_each_cell_and_keeps_ignore():
    labels = torch.arange(64).view(1, 8, 8) % 21
    labels[0, 2, 2] = 255
    logits, grid = loss_grid(torch.randn(1, 21, 2, 2).to(memory_format=torch.channels_last), labels, 4)
    assert grid.tolist() == [[[255, labels[0, 2, 6].item()], [labels[0, 6, 2].item(), labels[0, 6, 6].item()]]]
    assert logits.shape == (1, 21, 2, 2) and logits.is_contiguous()
    full_logits, full = loss_grid(torch.randn(1, 21, 2, 2), labels, 1)
    assert torch.equal(full, labels) and full_logits.shape == (1, 21, 8, 8)


def test_segmentation_loss_at_stride_1_is_the_full_size_loss_and_stride_4_differs():
    torch.manual_seed(0)
    model = build_segmenter({**CFG, "head": "aspp_plus"}, 3).eval()
    x, labels = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, 3, (2, 64, 64))
    labels[:, :8] = 255
    full = torch.nn.functional.cross_entropy(model(x), labels, ignore_index=255)
    at_1 = segmentation_loss({**CFG, "loss": "cross_entropy", "loss_stride": 1})(model, [x, labels])
    at_4 = segmentation_loss({**CFG, "loss": "cross_entropy", "loss_stride": 4})(model, [x, labels])
    assert torch.allclose(at_1, full, atol=1e-6)
    assert not torch.allclose(at_4, full, atol=1e-4)


def test_warm_start_copies_the_refiner_and_keeps_a_fresh_background_output():
    torch.manual_seed(0)
    refiner = ASPPLocalizer(2, pretrained=False, output_stride=16, channels=8, rates=(1, 2))
    seg = build_segmenter(CFG, 3)
    background = seg.head.classifier.weight[0].clone()
    warm_start(seg, refiner.state_dict(), "refiner.pt")
    torch.testing.assert_close(seg.head.classifier.weight[1:], refiner.head.classifier.weight)
    torch.testing.assert_close(seg.head.classifier.weight[0], background)
    for key, value in refiner.state_dict().items():
        if not key.startswith("head.classifier"):
            torch.testing.assert_close(seg.state_dict()[key], value)
    # another head width does not fit: the error names the source and the keys
    other = ASPPLocalizer(2, pretrained=False, output_stride=16, channels=16, rates=(1, 2))
    with pytest.raises(ValueError, match=r"refiner\.pt does not fit.*head\."):
        warm_start(build_segmenter(CFG, 3), other.state_dict(), "refiner.pt")


@pytest.mark.parametrize("backbone, stride, channels", [("efficientnet_lite0", 8, 40), ("efficientnet_lite0", 4, 24),
                                                          ("resnet50", 4, 256)])
def test_decoder_head_taps_low_level_features_and_keeps_the_image_size(backbone, stride, channels):
    torch.manual_seed(0)
    seg = build_segmenter({**CFG, "backbone": backbone, "head": "aspp_plus", "low_level_stride": stride}, 3)
    assert seg.head.reduce[0].in_channels == channels
    seen = {}
    seg.head.reduce.register_forward_hook(lambda m, i, o: seen.update(low=i[0].shape))  # returns None
    x = torch.rand(2, 3, 64, 48) * 255
    out = seg(x)
    assert out.shape == (2, 3, 64, 48) and seen["low"][-2:] == (64 // stride, 48 // stride)
    # the low-level path is trained: boundaries come from it
    out.sum().backward()
    assert seg.head.reduce[0].weight.grad.abs().sum() > 0


def test_decoder_head_names_a_stride_the_backbone_lacks():
    with pytest.raises(ValueError, match=r"segmenter.low_level_stride.*strides \[2, 4, 8, 16\].*not 32"):
        build_segmenter({**CFG, "head": "aspp_plus", "low_level_stride": 32}, 3)
    with pytest.raises(ValueError, match=r"segmenter.head: VGG16 offers no low-level features"):
        build_segmenter({**CFG, "backbone": "vgg16", "output_stride": 8, "head": "aspp_plus"}, 3)


def test_warm_start_into_a_decoder_head_copies_the_aspp_and_keeps_the_decoder_fresh():
    torch.manual_seed(0)
    refiner = ASPPLocalizer(2, pretrained=False, output_stride=16, channels=8, rates=(1, 2))
    seg = build_segmenter({**CFG, "head": "aspp_plus", "low_level_stride": 8}, 3)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    warm_start(seg, refiner.state_dict(), "refiner.pt")
    after = seg.state_dict()
    for key, value in refiner.state_dict().items():
        if not key.startswith("head.classifier"):
            torch.testing.assert_close(after[key], value)
    for key in after:
        if key.startswith(("head.reduce.", "head.fuse.", "head.classifier.")):
            torch.testing.assert_close(after[key], before[key])
