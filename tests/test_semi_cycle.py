"""Cycle consistency (wsss/semi/cycle.py): shapes, the cycle losses teach both S and G and fall, the
discriminators train on their own loss and are left alone by the generators' adversarial terms."""
import pytest
import torch

from models.segmenter import build_segmenter
from wsss.semi import cycle
from wsss.semi.losses import Parts

CFG = {"backbone": "efficientnet_lite0", "head": "aspp", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "loss": "cross_entropy", "loss_stride": 1, "low_level_stride": 8}
SEMI = {"pseudo_weight": 1.0, "rampup": 0.0,
        "cyclegan": {"size": 16, "generator_width": 8, "discriminator_width": 8, "generator_weight": 1.0,
                     "adversarial_weight": 0.1, "cycle_image_weight": 1.0, "cycle_mask_weight": 0.5}}


def model():
    torch.manual_seed(0)
    return cycle.CycleModel(build_segmenter(CFG, 3), 3, 16, 8, 8)


def batch():
    """Images whose colour follows their mask (blocks of 8 pixels), so an image and its mask can be
    drawn from each other; two rows of the masks are ignored (255)."""
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (4, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    colours = torch.tensor([[30.0, 60.0, 200.0], [220.0, 40.0, 40.0], [40.0, 200.0, 60.0]])
    x = colours[labels].permute(0, 3, 1, 2) + torch.randn(4, 3, 32, 32) * 5
    labels[:, :2] = 255
    return x.clamp(0, 255), labels, torch.tensor([True, True, False, False])


def grad_sum(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_shapes_and_ranges():
    m = model()
    masks = m.small_masks(batch()[1])
    assert masks.shape == (4, 3, 16, 16) and torch.allclose(masks.sum(1), torch.ones(4, 16, 16))
    image = m.generator(masks)
    assert image.shape == (4, 3, 16, 16) and image.abs().max() <= 1
    assert m.d_image(image).shape == m.d_mask(masks).shape == (4, 1, 4, 4)
    assert m.to_pixels(image, (32, 32)).shape == (4, 3, 32, 32)
    assert 0 < m.parameter_counts()["generator_params"] < 10_000


def test_each_cycle_loss_teaches_both_the_segmenter_and_the_generator():
    for name in ("cycle_image", "cycle_mask"):
        m = model()
        x, labels, masked = batch()
        cycle.losses(m, CFG, SEMI, x, labels, masked)[name].backward()
        assert grad_sum(m.segmenter.head) > 0, name
        assert grad_sum(m.generator) > 0, name
        assert grad_sum(m.d_image) == grad_sum(m.d_mask) == 0, name


def test_the_generators_adversarial_terms_leave_the_discriminators_alone():
    m = model()
    terms = cycle.losses(m, CFG, SEMI, *batch())
    (terms["adv_segmenter"] + terms["adv_generator"]).backward()
    assert grad_sum(m.d_image) == grad_sum(m.d_mask) == 0
    assert grad_sum(m.segmenter.head) > 0 and grad_sum(m.generator) > 0
    m.zero_grad()
    terms = cycle.losses(m, CFG, SEMI, *batch())
    (terms["d_image"] + terms["d_mask"]).backward()
    assert grad_sum(m.d_image) > 0 and grad_sum(m.d_mask) > 0
    assert grad_sum(m.segmenter) == grad_sum(m.generator) == 0   # they judge detached outputs


def test_the_discriminators_learn_to_tell_real_from_fake():
    m = model()
    x, labels, masked = batch()
    opt = torch.optim.Adam([*m.d_image.parameters(), *m.d_mask.parameters()], lr=1e-3)
    first = None
    for _ in range(15):
        terms = cycle.losses(m, CFG, SEMI, x, labels, masked)
        loss = terms["d_image"] + terms["d_mask"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("term", ["cycle_image", "cycle_mask"])
def test_the_training_step_adds_each_weighted_cycle_loss_and_learns_from_it(term):
    """The step's loss, not the term alone (tested above): its weight from 0 to 2 adds 2 x the term,
    and changes the gradients of the segmenter's head and the generator (the two it teaches)."""
    results = []
    for weight in (0.0, 2.0):
        m = model().eval()   # eval: no dropout, the same forward at both weights
        parts = Parts()
        semi = {**SEMI, "cyclegan": {**SEMI["cyclegan"], f"{term}_weight": weight}}
        x, labels, _ = batch()
        loss = cycle.batch_loss_fn(CFG, semi, n_masked=2, total_steps=1, parts=parts)(m, (x, labels, torch.arange(4)))
        loss.backward()
        results.append((loss.detach(), parts.epoch_stats()[term], [p.grad.clone() for p in [*m.segmenter.head.parameters(), *m.generator.parameters()]]))
    (base, value, base_grads), (loss, _, grads) = results
    assert value > 1e-3
    torch.testing.assert_close(loss - base, torch.tensor(2.0 * value), rtol=1e-3, atol=1e-5)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, base_grads)), f"{term} has no gradient"


def test_training_lowers_the_cycle_losses():
    """The whole step (supervised, adversarial, cycle, discriminators; ramped as in a run) on one batch."""
    m = model()
    parts = Parts()
    step = cycle.batch_loss_fn(CFG, {**SEMI, "rampup": 0.5}, n_masked=2, total_steps=30, parts=parts)
    x, labels, _ = batch()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        loss = step(m, (x, labels, torch.arange(4)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats = parts.epoch_stats()
        history.append((stats["cycle_image"], stats["cycle_mask"]))
    assert history[-1][0] < 0.8 * history[0][0]
    assert history[-1][1] < 0.85 * history[0][1]
