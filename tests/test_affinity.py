"""Random-walk refinement (wsss/localization/affinity.py, models/affinity.py): pair labels, the walk's
transitions, and what the walk may and may not carry."""
import numpy as np
import torch

from wsss.localization import affinity as aff
from models.affinity import AffinityNet


def test_confident_labels_split_the_maps_into_class_background_and_ignored():
    maps = np.array([[[0.9, 0.3, 0.05]], [[0.2, 0.6, 0.0]]], np.float32)   # 2 classes x 1 x 3
    assert aff.confident_labels(maps, [3, 7], 0.5, 0.1).tolist() == [[3, 7, 0]]
    assert aff.confident_labels(maps, [3, 7], 0.7, 0.1).tolist() == [[3, aff.IGNORE, 0]]
    assert aff.confident_labels(np.zeros((0, 2, 2), np.float32), [], 0.5, 0.1).tolist() == [[0, 0], [0, 0]]


def test_offsets_cover_each_neighbour_pair_once():
    pairs = aff.offsets(2)
    both = pairs + [(-dy, -dx) for dy, dx in pairs]
    disc = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if 0 < dy * dy + dx * dx <= 4]
    assert sorted(both) == sorted(disc) and len(set(both)) == len(both)


def test_pair_labels_ignore_the_uncertain_band_and_tell_same_from_different():
    labels = torch.tensor([[[0, 0, 5, 255, 5, 9]]])
    (bg, fg, neg), = aff.pair_labels(labels, [(0, 1)])
    assert bg[0, 0].tolist() == [True, False, False, False, False]
    assert fg.sum() == 0                       # the two 5s are 2 apart, not neighbours at offset (0, 1)
    assert neg[0, 0].tolist() == [False, True, False, False, True]
    (_, fg2, _), = aff.pair_labels(labels, [(0, 2)])
    assert fg2[0, 0].tolist() == [False, False, True, False]


def test_affinity_loss_prefers_features_that_agree_with_the_pair_labels():
    labels = torch.tensor([[[0, 0, 4, 4]]])
    pairs = [(0, 1)]
    good = torch.tensor([[[[0.0, 0.0, 5.0, 5.0]]]])    # B x D x h x w: equal inside regions, far across
    bad = torch.tensor([[[[0.0, 5.0, 5.0, 0.0]]]])
    loss = [aff.affinity_loss(aff.pair_affinities(f, pairs), aff.pair_labels(labels, pairs)) for f in (good, bad)]
    assert loss[0] < 0.01 < loss[1]


def test_transition_rows_sum_to_one():
    rng = np.random.default_rng(0)
    pairs, (h, w) = aff.offsets(3), (7, 9)
    affinities = [rng.random((h - dy, w - abs(dx))) for dy, dx in pairs]
    t = aff.transition_matrix(affinities, pairs, (h, w), beta=4.0)
    np.testing.assert_allclose(np.asarray(t.sum(1)).ravel(), 1.0, rtol=1e-12)
    assert (t.toarray() >= 0).all()


def _two_regions(h=12, w=16, split=8):
    """Affinities of a grid cut by a vertical edge at column `split`: 1 within a side, ~0 across."""
    pairs = aff.offsets(3)
    side = np.arange(w) >= split
    out = []
    for dy, dx in pairs:
        (sy, sx), (ty, tx) = aff._pair_slices(h, w, dy, dx)
        same = side[None, sx] == side[None, tx]
        out.append(np.broadcast_to(np.where(same, 1.0, 1e-3), (h - dy, sx.stop - sx.start)).copy())
    return pairs, out, side


def test_the_walk_does_not_carry_a_class_across_an_edge():
    h, w = 12, 16
    pairs, affinities, side = _two_regions(h, w)
    maps = np.zeros((1, h, w), np.float32)
    maps[0, 4:8, 2:5] = 1.0                       # a confident blob on the left side only
    t = aff.transition_matrix(affinities, pairs, (h, w), beta=8.0)
    walked = aff.random_walk(t, maps, steps=200)[0]
    assert walked[:, ~side].min() > 0.05           # spread over its own region
    assert walked[:, side].max() < 1e-6            # never across the edge


def test_the_background_score_survives_the_walk():
    h, w = 12, 16
    pairs, affinities, side = _two_regions(h, w)
    maps = np.zeros((1, h, w), np.float32)
    maps[0, :, :8] = 0.9                          # the class fills the left region, background the right
    out = aff.propagate(maps, affinities, pairs, (h, w), beta=8.0, steps=100, bg_power=2.0)[0]
    assert out[:, side].max() < 0.01               # background keeps the right side
    assert out[:, ~side].min() > 0.9               # the class keeps the left


def test_affinity_net_gives_one_feature_vector_per_grid_cell():
    net = AffinityNet(pretrained=False, stride=8, feature_dim=16).eval()
    with torch.no_grad():
        f = net(torch.rand(1, 3, 75, 100) * 255)
    assert f.shape == (1, 16, 10, 13) and net.grid((75, 100)) == (10, 13)


def test_the_crf_snaps_confident_regions_to_the_image_edge():
    h, w = 24, 32
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 16:] = 255                                  # an edge at column 16
    maps = np.zeros((1, h, w), np.float32)
    maps[0, :, 4:22] = 0.9                               # a blob that spills 6 px past the edge
    crf = {"iterations": 10, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 50, "bilateral_srgb": 5,
           "bilateral_compat": 10}
    plain = aff.confident_labels(maps, [2], 0.5, 0.1)
    snapped = aff.crf_confident_labels(image, maps, [2], 0.5, 0.1, crf)
    assert (plain[:, 16:22] == 2).all()                   # thresholding keeps the spill
    assert (snapped[:, 17:] != 2).all() and (snapped[:, 6:15] == 2).all()


def test_propagation_fills_the_region_a_blob_sits_in_and_stops_at_its_edge():
    h, w = 12, 16
    pairs, affinities, side = _two_regions(h, w)
    maps = np.zeros((1, h, w), np.float32)
    maps[0, 4:8, 2:5] = 1.0                        # a blob inside the left region only
    out = aff.propagate(maps, affinities, pairs, (h, w), beta=8.0, steps=200, bg_power=2.0)[0]
    assert out[:, ~side].min() > 0.1               # the class reaches every corner of its region (0 unwalked)
    assert out[:, side].max() < 0.01               # and nothing past the edge
