"""CutMix consistency with a mean teacher (wsss/semi/cutmix.py): boxes of the asked share, images and labels
mixed alike, unconfident teacher pixels ignored, a teacher that follows the student's weights but never
a gradient, and a loss whose consistency term is the mixed teacher's classes."""
import copy

import pytest
import torch

from models.segmenter import build_segmenter
from wsss.scoring.metrics import IGNORE
from wsss.semi import cutmix
from wsss.semi.losses import Parts
from wsss.training.trainer import make_optimizer

CFG = {"backbone": "efficientnet_lite0", "head": "aspp", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "loss": "cross_entropy", "loss_stride": 1, "low_level_stride": 8,
       "seed": 0, "lr": 0.1, "new_layer_lr_mult": 1.0, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}
SEMI = {"pseudo_weight": 0.0, "rampup": 0.0,
        "cutmix": {"consistency_weight": 1.0, "confidence": 0.0, "teacher_decay": 0.5, "box_share": 0.5}}


def model(decay: float = 0.5) -> cutmix.MeanTeacher:
    torch.manual_seed(0)
    return cutmix.MeanTeacher(build_segmenter(CFG, 3), decay)


def batch(n: int = 4):
    torch.manual_seed(1)
    return torch.rand(n, 3, 32, 32) * 255, torch.randint(0, 3, (n, 32, 32)), torch.arange(n)


def test_boxes_cover_the_share_as_one_rectangle():
    boxes = cutmix.box_masks(20, (40, 60), 0.5, torch.Generator().manual_seed(0))
    for box in boxes[:, 0]:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box.sum() == len(rows) * len(cols)                         # a filled rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert 0.4 < float(box.mean()) < 0.6
    assert not torch.equal(boxes[0], boxes[1])


def test_images_and_labels_mix_alike_and_unconfident_pixels_are_ignored():
    box = torch.zeros(1, 1, 4, 4)
    box[..., :2, :] = 1
    a, b = torch.full((1, 3, 4, 4), 10.0), torch.full((1, 3, 4, 4), 20.0)
    mixed = cutmix.mix(box, a, b)
    assert (mixed[..., :2, :] == 10).all() and (mixed[..., 2:, :] == 20).all()
    la, lb = torch.ones(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 2)
    assert cutmix.mix_labels(box, la, lb).tolist() == [[[1] * 4] * 2 + [[2] * 4] * 2]
    probs = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    probs[0, :, 0, 0] = torch.tensor([0.05, 0.95, 0.0])
    assert cutmix.confident_labels(probs, 0.9).tolist() == [[[1, IGNORE], [IGNORE, IGNORE]]]
    assert cutmix.confident_labels(probs, 0.0).tolist() == [[[1, 0], [0, 0]]]


def test_the_teacher_follows_the_student_but_takes_no_gradient():
    m = model(decay=0.5)
    opt = make_optimizer(m, CFG)
    assert not any(id(p) in {id(q) for g in opt.param_groups for q in g["params"]} for p in m.teacher.parameters())
    m.train()
    assert not m.teacher.training and m.segmenter.training
    loss = cutmix.batch_loss_fn(CFG, SEMI, 2, 10, Parts())(m, batch())
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    before = m.teacher.head.classifier.weight.clone()
    opt.step()
    student = m.segmenter.head.classifier.weight.detach()
    assert not torch.allclose(before, student)
    m.update_teacher()
    torch.testing.assert_close(m.teacher.head.classifier.weight, 0.5 * before + 0.5 * student)


def test_the_teacher_update_is_the_hand_written_one_bit_for_bit():
    """The values the hand-written teacher gave: a copy of the student, then at each update
    teacher = teacher x decay + student x (1 - decay) (multiply, then add) and buffers copied."""
    m = model(decay=0.99)
    reference = copy.deepcopy(m.segmenter)
    opt = make_optimizer(m, CFG)
    m.train()
    x = batch()[0]
    for _ in range(4):
        m.update_teacher()
        with torch.no_grad():
            for t, s in zip(reference.parameters(), m.segmenter.parameters()):
                t.mul_(0.99).add_(s, alpha=0.01)
            for t, s in zip(reference.buffers(), m.segmenter.buffers()):
                t.copy_(s)
        opt.zero_grad()
        logits, _ = cutmix.logits_and_aux(m.segmenter, x)
        logits.square().mean().backward()   # a step: the weights and the BatchNorm statistics move
        opt.step()
    got, want = m.teacher.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert not torch.equal(got["head.classifier.weight"], m.segmenter.head.classifier.weight)


@pytest.mark.parametrize("n_masked", [2, 3])
def test_the_student_learns_the_mixed_teacher_classes_on_mixed_images(monkeypatch, n_masked):
    m = model()
    m.eval()   # no dropout: the control below recomputes the same forward pass
    seen, targets = [], []
    real_logits = cutmix.logits_and_aux
    monkeypatch.setattr(cutmix, "logits_and_aux", lambda net, x: seen.append((net, x.clone())) or real_logits(net, x))
    real_part = cutmix.part_loss
    monkeypatch.setattr(cutmix, "part_loss", lambda cfg, lg, lab, keep, aux=None: targets.append(lab.clone())
                        or real_part(cfg, lg, lab, keep, aux))
    parts = Parts()
    x, labels, index = batch()
    loss = cutmix.batch_loss_fn(CFG, SEMI, n_masked, 10, parts)(m, (x, labels, index))
    n = 4 - n_masked
    if n < 2:   # one unmasked image has no partner: no teacher, no mixing, no consistency term
        assert len(seen) == 1 and torch.equal(seen[0][1], x)
        assert float(loss.detach()) == pytest.approx(parts.epoch_stats()["loss_masks"], rel=1e-6)
        return
    (teacher, tx), (student, sx) = seen
    assert teacher is m.teacher and student is m.segmenter
    assert torch.equal(tx, x[n_masked:])                        # the teacher sees the unmixed images
    assert torch.equal(sx[:n_masked], x[:n_masked])             # masked images are not mixed
    mixed = sx[n_masked:]
    inside = (mixed == x[n_masked:]).all(1)                     # pixels kept from the image itself
    from_partner = (mixed == x[n_masked:].roll(-1, 0)).all(1)
    assert (inside | from_partner).all() and 0.3 < float(inside.float().mean()) < 0.7
    with torch.no_grad():
        probs = cutmix.teacher_probs(m.teacher, x[n_masked:])
    want = torch.where(inside, probs.argmax(1), probs.roll(-1, 0).argmax(1))
    consistency = targets[-1]
    assert torch.equal(consistency[n_masked:], want) and (consistency[:n_masked] == IGNORE).all()
    stats = parts.epoch_stats()
    assert stats["confident"] == 1.0 and stats["loss_consistency"] > 0
    # control: at consistency weight 0 (and pseudo 0) the loss is the masks' alone
    monkeypatch.undo()
    zero = {**SEMI, "cutmix": {**SEMI["cutmix"], "consistency_weight": 0.0}}
    control = model()
    control.eval()
    only_masks = cutmix.batch_loss_fn(CFG, zero, n_masked, 10, Parts())(control, batch())
    assert float(only_masks.detach()) == pytest.approx(stats["loss_masks"], rel=1e-5)
    assert float(loss.detach()) > float(only_masks.detach())
