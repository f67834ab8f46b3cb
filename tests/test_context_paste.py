"""Context-decoupling pasting: objects are cut where their CAM is strong, land on other images with
their class added to the tags, and only after the plain-training warm-up."""
import numpy as np
import torch
from torch import nn

from wsss.localization.context_paste import ContextPaste, cut_objects, paste_objects


def _scene():
    """Two 64 px images; image 0 has a bright 16 px square where class 1's map peaks."""
    images = torch.full((2, 3, 64, 64), 10.0)
    images[0, :, 16:32, 16:32] = 200.0
    maps = torch.zeros(2, 3, 8, 8)
    maps[0, 1, 2:4, 2:4] = 4.0        # 8 px cells: the square's cells
    maps[0, 2] = 1.0                  # an untagged class: never cut
    targets = torch.zeros(2, 3)
    targets[0, 1] = 1.0               # image 1 has no tags: nothing to cut
    return images, targets, maps


def test_cut_objects_follow_the_tagged_cam():
    images, targets, maps = _scene()
    (obj,) = cut_objects(images, targets, maps, threshold=0.5, rng=np.random.default_rng(0), max_side=1.0)
    assert obj.cls == 1
    h, w = obj.mask.shape
    assert 12 <= h <= 24 and 12 <= w <= 24            # about the square, not the whole image
    assert (obj.pixels[:, obj.mask] == 200.0).float().mean() > 0.8


def test_cut_objects_are_scaled_to_max_side():
    images, targets, maps = _scene()
    maps[0, 1] = 4.0                                   # the map covers the whole image
    (obj,) = cut_objects(images, targets, maps, threshold=0.5, rng=np.random.default_rng(0), max_side=0.25)
    assert max(obj.mask.shape) <= 16 and obj.pixels.shape[1:] == obj.mask.shape


def test_paste_adds_pixels_and_tag_without_touching_inputs():
    images, targets, maps = _scene()
    bank = cut_objects(images, targets, maps, 0.5, np.random.default_rng(0), 1.0)
    before = images.clone()
    out, out_targets, pasted = paste_objects(images, targets, bank, prob=1.0, rng=np.random.default_rng(1))
    assert torch.equal(images, before) and targets[1].sum() == 0
    assert pasted.all() and out_targets[1, 1] == 1.0 and out_targets[1].sum() == 1.0
    assert (out[1] == 200.0).all(0).sum() >= 0.8 * bank[0].mask.sum()  # the object's pixels on image 1
    none, none_targets, none_pasted = paste_objects(images, targets, bank, prob=0.0, rng=np.random.default_rng(1))
    assert torch.equal(none, images) and torch.equal(none_targets, targets) and not none_pasted.any()


class _Recorder(nn.Module):
    """Returns fixed maps (class 1 on the square) and records what it was shown."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))
        self.seen = []

    def forward(self, images):
        self.seen.append(images.clone())
        maps = _scene()[2][: images.shape[0]] + self.bias.view(1, 3, 1, 1)
        return maps.mean(dim=(2, 3)), maps


def test_context_paste_waits_for_the_warm_up_then_pastes():
    images, targets, _ = _scene()
    cfg = {"prob": 1.0, "start_epoch": 2, "mask_threshold": 0.5, "max_side": 1.0}
    loss, model = ContextPaste(cfg, steps_per_epoch=1, seed=0), _Recorder()
    for _ in range(3):
        value = loss(model, (images, targets))
        assert value.requires_grad
    first, second, third = model.seen
    assert torch.equal(first, images) and torch.equal(second, images)  # epochs 1-2: plain
    assert not torch.equal(third, images)                               # epoch 3: image 1 got the square
    assert (third[1] == 200.0).all(0).any()
