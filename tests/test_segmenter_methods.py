"""The OCR head (models/ocr.py) and the locally adaptive loss (models/losses.py)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from wsss.config.params import ParamsError, validate
from wsss.dataset import voc
from models.classifier import ASPPLocalizer
from models.networks import from_config, to_config
from models.ocr import OCRHead, region_representations
from models.registry import HEADS, LOSSES
from models.segmenter import build_segmenter
from wsss.training import checkpoints
from wsss.training.segmentation import predict_probs, segmentation_loss, train, warm_start

from tests.conftest import REPO

CRF = {"iterations": 2, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 20, "bilateral_srgb": 10,
       "bilateral_compat": 5}
CFG = {"backbone": "efficientnet_lite0", "head": "ocr", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "val_flip": True, "val_scales": [1.0], "freeze_bn": True,
       "freeze_blocks": 3, "epochs": 1, "batch_size": 2, "crop_size": 32, "resize_long": [40, 56],
       "optimizer": "adamw", "lr_schedule": "poly", "lr_step_epochs": [1], "lr": 1e-3, "new_layer_lr_mult": 10.0,
       "weight_decay": 0.0, "momentum": 0.9, "seed": 0, "device": "cpu", "precision": "fp32", "loss_stride": 1,
       "num_workers": 0, "crf": CRF, "loss": "cross_entropy", "aux_weight": 0.4, "loss_windows": [1, 2, 4]}
adaptive = LOSSES.get("locally_adaptive")


# ---------------------------------------------------------------- OCR head

def test_ocr_is_registered_for_the_segmenter():
    assert HEADS.get("ocr") is OCRHead and "ocr_plus" in HEADS.names()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = validate(raw, ["segmenter.head=ocr", "segmenter.loss=locally_adaptive"])
    assert params["segmenter"]["head"] == "ocr" and params["segmenter"]["aux_weight"] == 0.4


def test_relation_is_a_softmax_over_regions_and_follows_them():
    torch.manual_seed(0)
    head = OCRHead(16, 4, channels=8).eval()
    pixels = torch.randn(2, 8, 5, 6)
    regions = region_representations(pixels, torch.randn(2, 4, 5, 6))
    assert regions.shape == (2, 8, 4, 1)
    relation = head.context.relation(pixels, regions)
    assert relation.shape == (2, 30, 4)                        # every pixel x every region
    assert (relation >= 0).all()
    torch.testing.assert_close(relation.sum(-1), torch.ones(2, 30))   # rows: a distribution over regions
    assert not torch.allclose(relation.sum(1), torch.full((2, 4), 1.0))   # not over pixels
    # reordering the regions reorders each pixel's relation the same way
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(head.context.relation(pixels, regions[:, :, order]), relation[:, :, order])


def test_region_representations_are_softmax_over_pixels_weighted_sums():
    pixels = torch.randn(1, 3, 4, 4)
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0, 1, 2] = 50.0          # region 0: all its weight on one pixel
    regions = region_representations(pixels, logits)[..., 0]   # 1 x C x K
    torch.testing.assert_close(regions[0, :, 0], pixels[0, :, 1, 2])
    torch.testing.assert_close(regions[0, :, 1], pixels[0].flatten(1).mean(1))   # flat logits: the mean


def test_the_ocr_logits_follow_the_object_regions_through_the_context():
    """The region head reaches the classifier only through the object context: zeroed or unused,
    the context would leave the logits unchanged when the regions change, and its layers unlearned."""
    torch.manual_seed(0)
    head = OCRHead(16, 4, channels=8).train()   # batch statistics: a fresh head's eval output is ~0
    head.fuse[1].p = 0.0                        # dropout off: the same pixels give the same logits
    x = torch.randn(2, 16, 6, 5)
    logits = head(x)
    logits.square().mean().backward()
    grad = head.context.value[0].weight.grad
    learned = 0.0 if grad is None else grad.abs().sum().item()
    assert learned > 0, "no gradient reaches the object context's value transform"
    with torch.no_grad():
        head.aux[1].weight.mul_(-4.0)           # other soft object regions, the same pixel features
        moved = (head(x) - logits).abs().max()
    assert moved > 0.1 * logits.std(), f"the logits moved by {moved:.2e} when the object regions changed"


@pytest.mark.parametrize("head, stride", [("ocr", 16), ("ocr_plus", 8)])
def test_ocr_segmenter_outputs_aux_in_training_and_plain_logits_at_inference(head, stride):
    torch.manual_seed(0)
    model = build_segmenter({**CFG, "head": head, "low_level_stride": 8}, 3).train()
    x = torch.rand(2, 3, 64, 48) * 255
    logits, aux = model.logits_and_aux(x)
    assert logits.shape == (2, 3, 64 // stride, 48 // stride)
    assert aux is not None and aux.shape == (2, 3, 4, 3)      # soft object regions at the backbone's stride
    model.eval()
    out, logits = model(x), model.logits(x)                   # what evaluation, predict and rounds call
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 64, 48)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, 64 // stride, 48 // stride)
    assert model.head.classifier.in_channels == 8             # label rounds hook the classifier's input
    probs = predict_probs(model, np.zeros((40, 50, 3), np.uint8), torch.device("cpu"), True)
    assert probs.shape == (3, 40, 50)
    # heads without an auxiliary output give None
    assert build_segmenter({**CFG, "head": "aspp"}, 3).logits_and_aux(x)[1] is None


def test_the_loss_adds_the_weighted_aux_loss_and_its_gradient_reaches_the_region_head():
    torch.manual_seed(0)
    model = build_segmenter(CFG, 3).train()      # batch statistics: a random backbone's eval output is ~0
    model.head.fuse[1].p = 0.0                   # dropout off, so the two losses see the same logits
    x, labels = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, 3, (2, 64, 64))
    labels[:, :8] = 255
    with_aux = segmentation_loss(CFG)(model, [x, labels])
    without = segmentation_loss({**CFG, "aux_weight": 0.0})(model, [x, labels])
    logits, aux = model.logits_and_aux(x)
    expected = F.cross_entropy(F.interpolate(aux, size=(64, 64), mode="bilinear", align_corners=False), labels,
                               ignore_index=255)
    torch.testing.assert_close(with_aux - without, 0.4 * expected)
    # the region head's last conv only feeds the relation through the regions; the aux loss gives it more
    grads = []
    for loss in (with_aux, without):
        model.zero_grad()
        loss.backward()
        grads.append(model.head.aux[1].weight.grad.clone())
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_ocr_segmenter_fits_a_tiny_batch():
    torch.manual_seed(0)
    model = build_segmenter(CFG, 3).train()
    x = torch.rand(2, 3, 64, 64) * 255
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 16:48, 16:48] = 1
    labels[1, 40:, :20] = 2
    labels[:, :4] = 255
    loss_fn = segmentation_loss(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = loss_fn(model, [x, labels])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


def test_ocr_segmenter_trains_through_the_stage_loop_and_round_trips_a_checkpoint(voc_fixture, tmp_path):
    classes = voc.read_classes(voc_fixture)

    def labels_for(image_id):
        return voc.load_mask(voc_fixture, image_id, len(classes))

    torch.manual_seed(0)
    model, history, _ = train(CFG, voc_fixture, voc.read_split(voc_fixture, "train"), labels_for, len(classes),
                              torch.device("cpu"), "test")
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    path = tmp_path / "seg.pt"
    checkpoints.save(path, model, to_config("segmenter", CFG, classes))
    again, config = checkpoints.load(path, torch.device("cpu"))
    assert type(again.head) is OCRHead and config["network"]["head"] == "ocr"
    assert type(from_config(config).head) is OCRHead
    x = torch.rand(1, 3, 48, 48) * 255
    torch.testing.assert_close(again(x), model.eval()(x))


def test_warm_start_into_ocr_takes_the_backbone_and_keeps_the_head_fresh():
    torch.manual_seed(0)
    refiner = ASPPLocalizer(2, pretrained=False, output_stride=16, channels=8, rates=(1, 2))
    seg = build_segmenter(CFG, 3)
    head_before = {k: v.clone() for k, v in seg.head.state_dict().items()}
    warm_start(seg, refiner.state_dict(), "refiner.pt")
    for key, value in refiner.backbone.state_dict().items():
        torch.testing.assert_close(seg.backbone.state_dict()[key], value)
    for key, value in seg.head.state_dict().items():
        torch.testing.assert_close(value, head_before[key])


# ---------------------------------------------------------------- locally adaptive loss

def _reference(logits, labels, windows, ignore=255):
    """The paper's estimator written out: per k x k cell and label, the mean softmax vector of the
    cell's pixels of that label; cost = -log of its label entry, once per pixel; mean over windows."""
    probs = torch.softmax(logits.double(), 1)
    b, _, h, w = logits.shape
    per_window = []
    for k in windows:
        total, n = 0.0, 0
        for i, y0, x0 in itertools.product(range(b), range(0, h, k), range(0, w, k)):
            cell = labels[i, y0:y0 + k, x0:x0 + k]
            for c in cell.unique().tolist():
                if c == ignore:
                    continue
                members = cell == c
                merged = probs[i, :, y0:y0 + k, x0:x0 + k][:, members].mean(1)
                total += -torch.log(merged[c]).item() * int(members.sum())
                n += int(members.sum())
        per_window.append(total / n)
    return sum(per_window) / len(per_window)


def test_adaptive_loss_at_window_1_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, 9) * 8    # confident (and confidently wrong) pixels too
    labels = torch.randint(0, 5, (2, 7, 9))
    labels[0, :2] = 255
    got = adaptive(logits, labels, windows=[1])
    assert abs(got.item() - F.cross_entropy(logits, labels, ignore_index=255).item()) < 1e-6


def test_adaptive_loss_matches_the_written_out_estimator_on_partial_cells():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 7, 6) * 3
    labels = torch.randint(0, 4, (2, 7, 6))
    labels[labels == 3] = 255                 # some ignored pixels inside cells
    for windows in ([2], [3], [1, 2, 4]):
        got = adaptive(logits, labels, windows=windows).item()
        assert got == pytest.approx(_reference(logits, labels, windows), rel=1e-5), windows


def test_adaptive_loss_merges_only_pixels_of_the_same_label():
    # one 2 x 2 cell: left column label 0, right column label 1; each column's two predictions differ
    logits = torch.tensor([[[4.0, 0.0], [-2.0, 1.0]],
                           [[0.0, -3.0], [0.0, 2.0]]])[None]        # 1 x 2 classes x 2 x 2
    labels = torch.tensor([[[0, 1], [0, 1]]])
    p = torch.softmax(logits, 1)[0]
    same_label = -(2 * torch.log(p[0, :, 0].mean()) + 2 * torch.log(p[1, :, 1].mean())) / 4
    whole_cell = -(2 * torch.log(p[0].mean()) + 2 * torch.log(p[1].mean())) / 4   # merging across labels
    got = adaptive(logits, labels, windows=[2])
    torch.testing.assert_close(got, same_label)
    assert abs(got - whole_cell) > 1e-2
    # a 255 pixel in the cell is no member: the right column's group is its one labelled pixel
    labels[0, 0, 1] = 255
    one = -(2 * torch.log(p[0, :, 0].mean()) + torch.log(p[1, 1, 1])) / 3
    torch.testing.assert_close(adaptive(logits, labels, windows=[2]), one)


def test_adaptive_loss_differs_from_ce_only_where_same_label_neighbours_disagree():
    torch.manual_seed(0)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1
    ce = lambda lg: F.cross_entropy(lg, labels, ignore_index=255)   # noqa: E731
    agreeing = torch.randn(1, 2, 1, 1).expand(1, 2, 4, 4).clone()
    agreeing[:, :, :, 2:] = torch.randn(1, 2, 1, 1)   # one prediction per label region: merging changes nothing
    torch.testing.assert_close(adaptive(agreeing, labels, windows=[2, 4]), ce(agreeing))
    differing = torch.randn(1, 2, 4, 4) * 3
    # the NLL of a mean is below the mean of the NLLs (Jensen): neighbours of one class are judged together
    assert adaptive(differing, labels, windows=[2]) < ce(differing) - 1e-3


def test_adaptive_loss_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    labels = torch.randint(0, 3, (1, 8, 8))
    labels[0, 2:5, 3:7] = 255
    loss = adaptive(logits, labels, windows=[1, 2, 4])
    loss.backward()
    ignored = (labels == 255)[:, None].expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().max() > 0
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 10
    assert adaptive(changed, labels, windows=[1, 2, 4]).item() == pytest.approx(loss.item(), abs=1e-7)
    # all ignored: zero, with a gradient (the trainer's backward still runs)
    empty = torch.randn(1, 3, 4, 4, requires_grad=True)
    zero = adaptive(empty, torch.full((1, 4, 4), 255), windows=[1, 2])
    zero.backward()
    assert zero.item() == 0.0 and empty.grad is not None and torch.isfinite(empty.grad).all()


def test_adaptive_loss_gradients_stay_finite_for_confident_mistakes():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 200.0                          # every pixel sure of class 1; labels say 0
    logits.requires_grad_(True)
    loss = adaptive(logits, torch.zeros(1, 2, 2, dtype=torch.long), windows=[1, 2])
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(200.0, rel=1e-4)
    assert torch.isfinite(logits.grad).all()


class _FixedLogits:
    """A model whose logits are given (no auxiliary output), for the loss wiring alone."""

    def __init__(self, logits):
        self.fixed = logits

    def logits_and_aux(self, x):
        return self.fixed, None


def test_segmentation_loss_passes_the_windows_from_the_section():
    torch.manual_seed(0)
    model = _FixedLogits(torch.randn(2, 3, 16, 16) * 3)
    x, labels = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, 3, (2, 64, 64))
    cfg = {**CFG, "head": "aspp", "loss": "locally_adaptive", "loss_stride": 4}
    ce = segmentation_loss({**cfg, "loss": "cross_entropy"})(model, [x, labels])
    torch.testing.assert_close(segmentation_loss({**cfg, "loss_windows": [1]})(model, [x, labels]), ce)
    assert not torch.allclose(segmentation_loss({**cfg, "loss_windows": [1, 2]})(model, [x, labels]), ce)


@pytest.mark.parametrize("value, message", [
    ("[2, 2]", "segmenter.loss_windows: [2, 2] repeats a value"),
    ("[0, 2]", "segmenter.loss_windows[0]: 0 is below the minimum 1"),
    ("[]", "segmenter.loss_windows: must not be empty"),
])
def test_loss_windows_are_validated(value, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(ParamsError) as err:
        validate(raw, [f"segmenter.loss_windows={value}"])
    assert str(err.value) == message


# ---------------------------------------------------------------- the same loss in semi-supervised training

def test_semi_training_takes_the_segmenter_loss_with_its_head_and_options():
    """wsss/semi/ trains with label_loss: an ocr head's auxiliary logits count there too, and a loss's own
    options (locally_adaptive has no `drop`) reach it, as they do in train_segmenter."""
    from wsss.semi.losses import Parts, supervised_batch_loss

    torch.manual_seed(0)
    model = build_segmenter(CFG, 3).train()
    x = torch.randn(4, 3, 32, 32)
    labels = torch.randint(0, 3, (4, 32, 32))
    labels[1, :8] = 255
    batch = (x, labels, torch.tensor([0, 1, 5, 6]))            # two masked images (index < 2), two pseudo
    plain = segmentation_loss(CFG)(model, (x, labels))

    def semi_loss(**change):
        with torch.no_grad():
            return supervised_batch_loss({**CFG, **change}, 2, 1.0, Parts())(model, batch)

    without_aux = semi_loss(aux_weight=0.0)
    assert float(semi_loss()) > float(without_aux) + 1e-4      # the ocr region head is supervised
    assert float(plain.detach()) > 0
    for loss in ("locally_adaptive", "small_loss_ce"):         # each loss with its own options
        value = semi_loss(loss=loss)
        assert torch.isfinite(value) and float(value) > 0
