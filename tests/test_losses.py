import pytest
import torch
import torch.nn.functional as F

from models.registry import LOSSES


def _batch():
    """Class 0: 8 pixels predicted right, 2 confidently wrong (noisy labels); class 1: 2 pixels, one wrong."""
    labels = torch.tensor([[0] * 10 + [1, 1, 255]])[:, :, None]              # 1 x 13 x 1
    logits = torch.zeros(1, 2, 13, 1)
    logits[0, 0, :8] = 4.0                                                    # right, small loss
    logits[0, 1, 8:10] = 6.0                                                  # wrong, large loss
    logits[0, 1, 10] = 4.0                                                    # right
    logits[0, 0, 11] = 1.0                                                    # wrong, mild
    return logits, labels


def test_small_loss_drops_the_largest_losses_per_class():
    logits, labels = _batch()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")[0, :, 0]
    got = LOSSES.get("small_loss_ce")(logits, labels, drop=0.2)
    # class 0 loses its two worst pixels (20% of 10); class 1 (2 pixels) keeps both: int(0.2 * 2) = 0
    expected = torch.cat([per_pixel[:8], per_pixel[10:12]]).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got < LOSSES.get("cross_entropy")(logits, labels)


def test_small_loss_without_drop_is_cross_entropy():
    logits, labels = _batch()
    assert LOSSES.get("small_loss_ce")(logits, labels, drop=0.0).item() == pytest.approx(
        F.cross_entropy(logits, labels, ignore_index=255).item(), rel=1e-6)
    assert LOSSES.get("cross_entropy")(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels, ignore_index=255).item(), rel=1e-6)


def test_small_loss_of_an_all_ignored_batch_is_zero_with_a_gradient():
    logits = torch.zeros(1, 2, 4, 1, requires_grad=True)
    loss = LOSSES.get("small_loss_ce")(logits, torch.full((1, 4, 1), 255), drop=0.2)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
