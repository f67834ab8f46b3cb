import numpy as np
import pytest

from wsss.scoring.metrics import confusion, iou_per_class, mean_iou, summary


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


def hand_written_average_precision(scores, targets):
    """The val mAP's AP as it was computed by hand: rows sorted by score (ties in row order), the
    precision at each positive averaged; NaN for a class without positives."""
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if targets[:, c].sum():
            hits = targets[np.argsort(-scores[:, c], kind="stable"), c]
            aps[c] = (np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum()
    return aps


def test_average_precision_is_the_hand_written_value_with_ties_and_empty_classes():
    from wsss.localization.classification import average_precision

    scores = np.array([[0.9, 0.5, 0.2, 0.7], [0.8, 0.5, 0.2, 0.1], [0.8, 0.4, 0.2, 0.3],
                       [0.1, 0.5, 0.9, 0.6], [0.8, 0.2, 0.2, 0.9], [0.3, 0.5, 0.2, 0.2]], np.float32)
    targets = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1], [0, 1, 0, 1]],
                       np.float32)   # column 2: no positive; column 3: all positive; 0 and 1: tied scores
    got = average_precision(scores, targets)
    want = hand_written_average_precision(scores, targets)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[2]) and got[3] == 1.0
    # ties count in row order, as the val mAP always has: 0.8 at rows 1, 2, 4 -> miss, hit, hit
    assert got[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    rng = np.random.default_rng(0)
    scores, targets = rng.random((50, 20)).round(1), (rng.random((50, 20)) < 0.2).astype(np.float32)
    np.testing.assert_allclose(average_precision(scores, targets), hand_written_average_precision(scores, targets),
                               rtol=1e-12)
