"""Co-training ensemble (wsss/semi/cotraining.py, models/ensemble.py): members that differ, an exchange
loss that teaches every member, adversarial images within eps, the ensemble's mean prediction."""
import copy

import pytest
import torch
import torch.nn.functional as F

from models.networks import to_config
from wsss.semi import cotraining
from wsss.semi.losses import Parts
from wsss.training import checkpoints
from wsss.training.segmentation import logits_and_aux

CFG = {"backbone": "efficientnet_lite0", "head": "aspp", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "loss": "cross_entropy", "loss_stride": 1, "low_level_stride": 8}
SEMI = {"seed": 0, "pseudo_weight": 1.0, "rampup": 0.0,
        "cotraining": {"members": 2, "member_fraction": 0.5, "agreement_weight": 1.0, "diversity_weight": 0.5,
                       "adversarial_eps": 4.0}}


def batch(n_masked: int = 2, n: int = 4):
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32) * 255
    labels = torch.randint(0, 3, (n, 32, 32))
    return x, labels, torch.arange(n)   # indices 0..n_masked-1 are the masked images


def members(identical: bool):
    torch.manual_seed(0)
    model = cotraining.build_members(CFG, 3, 2)
    if identical:
        model.members[1].load_state_dict(model.members[0].state_dict())
    return model


def one_step(model, semi):
    loss_fn, subsets = cotraining.batch_loss_fn(CFG, semi, 2, 4, total_steps=1, parts=Parts())
    model.eval()   # no dropout: any difference between the members comes from what they learn from
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = loss_fn(model, batch())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return subsets


def test_members_from_the_same_weights_differ_after_a_step_on_their_own_masks():
    model = members(identical=True)
    subsets = one_step(model, SEMI)
    assert subsets[0] != subsets[1]                           # one of the two masked images each
    a, b = (m.head.classifier.weight for m in model.members)
    assert not torch.allclose(a, b)
    x = batch()[0]
    with torch.no_grad():
        assert not torch.allclose(model.members[0](x), model.members[1](x))
    # control: with the same masks for both, identical members stay identical (the test can fail)
    same = members(identical=True)
    one_step(same, {**SEMI, "cotraining": {**SEMI["cotraining"], "member_fraction": 1.0}})
    torch.testing.assert_close(same.members[0].head.classifier.weight, same.members[1].head.classifier.weight)


def test_member_subsets_are_seeded_and_sized():
    subsets = cotraining.member_subsets(10, 3, 0.7, seed=5)
    assert [len(s) for s in subsets] == [7, 7, 7] and len({tuple(s) for s in subsets}) == 3
    assert subsets == cotraining.member_subsets(10, 3, 0.7, seed=5)
    assert cotraining.member_subsets(0, 2, 0.7, 0) == [[], []] and cotraining.member_subsets(1, 2, 0.1, 0) == [[0], [0]]


def test_the_agreement_loss_teaches_every_member():
    model = members(identical=False)
    x = batch()[0]
    jsd = cotraining.jensen_shannon([m.logits(x) for m in model.members])
    assert jsd > 0
    jsd.backward()
    for m in model.members:
        assert m.head.classifier.weight.grad.abs().sum() > 0
    # identical predictions: no divergence
    same = torch.randn(2, 3, 4, 4)
    assert cotraining.jensen_shannon([same, same.clone()]).abs() < 1e-6


def test_the_diversity_loss_teaches_every_member():
    model = members(identical=False)
    x = batch()[0]
    logits = [m.logits(x) for m in model.members]
    cotraining.diversity(list(model.members), x, logits, eps=4.0).backward()
    for m in model.members:
        assert m.head.classifier.weight.grad.abs().sum() > 0


def step(agreement: float, diversity: float):
    """(loss, members' classifier gradients, model) of one training step on batch() at these weights."""
    model = members(identical=False).eval()   # eval: no dropout, the same forward at every weight
    semi = {**SEMI, "cotraining": {**SEMI["cotraining"], "agreement_weight": agreement, "diversity_weight": diversity}}
    loss = cotraining.batch_loss_fn(CFG, semi, 2, 4, total_steps=1, parts=Parts())[0](model, batch())
    loss.backward()
    return loss.detach(), [m.head.classifier.weight.grad.clone() for m in model.members], model


def member_logits(model, x):
    with torch.no_grad():
        return [logits_and_aux(m, x)[0] for m in model.members]


# The loss functions alone are tested above; these fail if the training step stops using them.

def test_the_training_step_adds_the_weighted_agreement_and_learns_from_it():
    base, base_grads, model = step(0.0, 0.0)
    loss, grads, _ = step(2.0, 0.0)
    jsd = cotraining.jensen_shannon(member_logits(model, batch()[0]))
    assert jsd > 1e-4
    torch.testing.assert_close(loss - base, 2.0 * jsd, rtol=1e-3, atol=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, base_grads)), "the agreement term has no gradient"


def test_the_training_step_adds_the_weighted_diversity_and_learns_from_it():
    base, base_grads, model = step(0.0, 0.0)
    loss, grads, _ = step(0.0, 0.5)
    x = batch()[0]
    differ = cotraining.diversity(list(model.members), x, member_logits(model, x), SEMI["cotraining"]["adversarial_eps"])
    assert differ > 1e-4
    torch.testing.assert_close(loss - base, 0.5 * differ.detach(), rtol=1e-3, atol=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, base_grads)), "the diversity term has no gradient"


class Linear(torch.nn.Module):
    """A member whose prediction visibly depends on the pixels (an untrained Lite0's hardly does)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def logits(self, x):
        return self.conv(x / 255.0)


@pytest.mark.parametrize("eps", [1.0, 4.0])
def test_the_adversarial_image_is_within_eps_and_works_against_its_member(eps):
    x = batch()[0].clamp(8, 247)
    for member in (members(identical=False).members[0].eval(), Linear()):
        target = member.logits(x).argmax(1).detach()
        adversarial = cotraining.fgsm(member, x, target, eps)
        change = (adversarial - x).abs()
        assert change.max() <= eps + 1e-4 and change.mean() > 0.9 * eps    # a full eps step almost everywhere
        assert adversarial.min() >= 0 and adversarial.max() <= 255
        assert all(p.grad is None for p in member.parameters())          # it teaches nothing by itself
    with torch.no_grad():   # the step goes against the member's own prediction
        assert F.cross_entropy(member.logits(adversarial), target) > F.cross_entropy(member.logits(x), target) + 1e-4


def test_the_ensemble_predicts_the_mean_of_its_members_and_round_trips(tmp_path):
    model = members(identical=False).eval()
    x = batch()[0][:2]
    with torch.no_grad():
        mean = torch.stack([F.softmax(m(x), 1) for m in model.members]).mean(0)
        torch.testing.assert_close(F.softmax(model(x), 1), mean, atol=1e-5, rtol=1e-4)
    checkpoints.save(tmp_path / "e.pt", model, to_config("segmenter_ensemble", {**CFG, **model.network_settings()},
                                                         ["background", "a", "b"]))
    loaded, config = checkpoints.load(tmp_path / "e.pt", torch.device("cpu"))
    assert config["kind"] == "segmenter_ensemble" and len(loaded.members) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-4, rtol=1e-4)


def test_the_ensemble_freezes_and_trains_like_one_segmenter():
    model = copy.deepcopy(members(identical=False))
    from models.backbones import freeze_prefix
    frozen = freeze_prefix(model.backbone, 2)
    one = freeze_prefix(members(identical=False).members[0].backbone, 2)
    assert frozen == 2 * one > 0
    assert len(model.new_modules()) == 2 and all(m is s.head for m, s in zip(model.new_modules(), model.members))
