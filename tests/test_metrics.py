import numpy as np
import pytest

from scoring.metrics import confusion, iou_per_class, mean_iou, summary


def test_confusion_matches_hand_count():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    expected = np.array([
        [1, 1, 0],   # gt 0: one right, one predicted as 1
        [0, 1, 1],   # gt 1: one right, one predicted as 2
        [0, 0, 1],   # gt 2: right; the 255 pixel is skipped
    ])
    np.testing.assert_array_equal(confusion(gt, pred, 3), expected)
    # IoU: class 0 = 1/(2+1-1) = 0.5, class 1 = 1/(2+2-1) = 1/3, class 2 = 1/(1+2-1) = 0.5
    np.testing.assert_allclose(iou_per_class(expected), [0.5, 1 / 3, 0.5])
    assert mean_iou(expected) == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)


def test_absent_classes_do_not_count_and_ignored_predictions_are_background():
    gt = np.array([1, 1, 0, 0])
    pred = np.array([1, 255, 0, 0])  # the uncertain pixel counts as background
    conf = confusion(gt, pred, 4)
    iou = iou_per_class(conf)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert iou[1] == pytest.approx(0.5) and iou[0] == pytest.approx(2 / 3)
    s = summary(conf, ["bg", "a", "b", "c"])
    assert s["miou"] == pytest.approx(100 * (0.5 + 2 / 3) / 2, abs=0.01)
    assert s["per_class_iou"]["b"] is None


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="ground-truth label 7"):
        confusion(np.array([7]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 3)
