"""Strong-weak dual branch (wsss/semi/dual.py): each head learns from its own labels only, the backbone
from both, and what predicts is the strong head."""
import pytest
import torch

from models.segmenter import build_segmenter
from wsss.semi import dual
from wsss.semi.losses import Parts
from tasks import train_semi
from tests.test_semi import workspace

CFG = {"backbone": "efficientnet_lite0", "head": "aspp_plus", "pretrained": False, "output_stride": 16,
       "aspp_channels": 8, "aspp_rates": [1, 2], "loss": "cross_entropy", "loss_stride": 1, "low_level_stride": 8}


BRANCHES = pytest.mark.parametrize("branch", ["head", "classifier"])


def model(head="aspp_plus", branch="head"):
    torch.manual_seed(0)
    return dual.DualBranch(build_segmenter({**CFG, "head": head}, 3), branch=branch)


def strong_part(m):
    """The strong branch's own parameters: the whole head, or with a shared head its classifier."""
    return m.segmenter.head if m.branch == "head" else m.segmenter.head.classifier


def batch(n=4):
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32) * 255
    labels = torch.randint(0, 3, (n, 32, 32))
    return x, labels, torch.arange(n)   # index < n_masked: masked


def grads(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def loss_of(m, n_masked, pseudo_weight=1.0, data=None):
    parts = Parts()
    loss = dual.batch_loss_fn(CFG, n_masked, pseudo_weight, parts)(m, data or batch())
    return loss, parts.epoch_stats()


@BRANCHES
def test_heads_start_different_and_share_the_backbone(branch):
    m = model(branch=branch)
    a = m.segmenter.head.classifier.weight
    b = m.weak_head.classifier.weight if branch == "head" else m.weak_head.weight
    assert a.shape == b.shape and not torch.equal(a, b)
    assert {id(p) for p in m.weak_head.parameters()}.isdisjoint(id(p) for p in m.segmenter.parameters())
    new = {id(p) for mod in m.new_modules() for p in mod.parameters()}
    assert {id(p) for p in m.weak_head.parameters()} <= new
    assert {id(p) for p in m.backbone.parameters()}.isdisjoint(new)


@BRANCHES
@pytest.mark.parametrize("n_masked, strong, weak", [(2, True, True), (4, True, False), (0, False, True)])
def test_each_head_learns_only_from_its_own_images(n_masked, strong, weak, branch):
    m = model(branch=branch)
    m.train()
    loss, parts = loss_of(m, n_masked)
    loss.backward()
    assert (grads(strong_part(m)) > 0) == strong
    assert (grads(m.weak_head) > 0) == weak
    assert grads(m.backbone) > 0
    assert (parts["loss_masks"] > 0) == strong and (parts["loss_pseudo"] > 0) == weak


@BRANCHES
def test_the_pseudo_labels_do_not_reach_the_strong_head(branch):
    """Changing the unmasked images' labels changes the weak head's gradient, never the strong head's."""
    x, labels, index = batch()
    heads = []
    for flip in (False, True):
        m = model(branch=branch)
        m.train()
        lab = labels.clone()
        if flip:
            lab[2:] = (lab[2:] + 1) % 3
        loss_of(m, 2, data=(x, lab, index))[0].backward()
        heads.append(([p.grad.clone() for p in strong_part(m).parameters() if p.grad is not None],
                      [p.grad.clone() for p in m.weak_head.parameters() if p.grad is not None]))
    assert all(torch.allclose(a, b) for a, b in zip(heads[0][0], heads[1][0]))
    assert not all(torch.allclose(a, b) for a, b in zip(heads[0][1], heads[1][1]))


def test_pseudo_weight_scales_the_weak_part():
    m = model()
    m.eval()   # batch norm in eval: the same forward both times
    with torch.no_grad():
        full, parts = loss_of(m, 2, 1.0)
        half, _ = loss_of(m, 2, 0.5)
    assert torch.isclose(full - half, 0.5 * torch.tensor(parts["loss_pseudo"]), rtol=1e-4)


@BRANCHES
def test_the_strong_branch_is_the_segmenter_that_predicts(branch):
    m = model("aspp", branch)
    m.eval()
    x, _, _ = batch(2)
    with torch.no_grad():
        strong, weak = m.branch_logits(x, torch.tensor([True, True]))
        assert weak is None
        assert torch.allclose(strong[0], m.segmenter.logits(x), atol=1e-5)


def test_a_classifier_branch_needs_a_head_that_shows_its_features():
    with pytest.raises(ValueError, match="semi.weak_branch: classifier needs a head"):
        dual.DualBranch(build_segmenter({**CFG, "head": "ocr"}, 3), branch="classifier")


def test_the_stage_trains_each_head_on_its_own_labels(tmp_path, voc_fixture, monkeypatch):
    """The loss the semi stage trains dual_branch with, not batch_loss_fn alone: masked images reach
    only the strong head, unmasked ones only the weak head (a loss the branches share would teach the
    head that predicts from the pseudo labels)."""
    from wsss.semi import stage

    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = workspace(tmp_path, voc_fixture, monkeypatch, ["semi.method=dual_branch"])
    x, labels, index = batch()
    reached = {}

    def fit(model, loader, cfg, device, batch_loss, desc, epoch_stats=None):
        n_masked = loader.dataset.n_masked
        for name, rows in (("masked", index < n_masked), ("unmasked", index >= n_masked)):
            model.zero_grad()
            batch_loss(model, (x[rows], labels[rows], index[rows])).backward()
            reached[name] = grads(strong_part(model)) > 0, grads(model.weak_head) > 0
        return [{"epoch": 1, "loss": 1.0, "seconds": 0.0}]
    monkeypatch.setattr(stage.trainer, "fit", fit)
    train_semi.main(params)
    assert reached == {"masked": (True, False), "unmasked": (False, True)}, f"(strong head, weak head) learned: {reached}"
