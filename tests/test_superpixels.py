"""wsss/labelling/superpixels.py: the vote, the adaptive similarity's best-first merge, and the
superpixel option of make_labels and of params.yaml."""
import copy

import numpy as np
import pytest
import yaml

from wsss.config.params import DEFAULTS, ParamsError, validate
from wsss.labelling import superpixels as sp
from wsss.labelling.pseudo import make_labels
from tests.conftest import REPO

SP = {**DEFAULTS["pseudo_labels"]["superpixels"], "enabled": True}


def _noisy(image: np.ndarray, seed: int = 0, amount: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(int) + rng.integers(-amount, amount + 1, image.shape), 0, 255).astype(np.uint8)


def _strips(colours: list, h: int = 16, w: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An image of vertical strips of the given RGB colours, and the strips as the over-segmentation."""
    image = np.concatenate([np.tile(np.array(c, np.uint8), (h, w, 1)) for c in colours], 1)
    segments = np.repeat(np.arange(len(colours), dtype=np.int32), w)[None].repeat(h, 0)
    return _noisy(image), segments


# The vote

def test_ignored_pixels_never_vote():
    labels = np.full((10, 10), 255, np.uint8)
    labels[0, :8] = 3          # 8 % of the region: class 3; the other 92 %: ignored
    labels[0, 8:] = 0          # and two background pixels
    regions = np.zeros((10, 10), np.int32)
    out = sp.vote(labels, regions, {**SP, "min_labelled": 0.05})
    assert (out == 3).all()    # counting 255 as a vote would have kept the region 255


def test_regions_vote_separately_and_fill_their_ignored_pixels():
    labels = np.zeros((4, 8), np.uint8)
    labels[:, :4] = 7
    labels[0, :4] = 255
    labels[1, 1] = 0           # a stray background pixel in the class-7 region
    labels[:, 4:6] = 255
    regions = np.zeros((4, 8), np.int32)
    regions[:, 4:] = 1
    out = sp.vote(labels, regions, SP)
    assert (out[:, :4] == 7).all() and (out[:, 4:] == 0).all()


@pytest.mark.parametrize("undecided, expected", [("keep", None), ("ignore", 255)])
def test_undecided_regions_keep_their_labels_or_become_ignored(undecided, expected):
    labels = np.zeros((4, 8), np.uint8)
    labels[:2, :4] = 5         # region 0: a 50/50 split of classes 5 and 6, below vote_min 0.6
    labels[2:, :4] = 6
    labels[:, 4:] = 255
    labels[0, 4] = 9           # region 1: 1 of 16 pixels labelled, below min_labelled 0.2
    regions = np.zeros((4, 8), np.int32)
    regions[:, 4:] = 1
    cfg = {**SP, "vote_min": 0.6, "min_labelled": 0.2, "undecided": undecided}
    out = sp.vote(labels, regions, cfg)
    np.testing.assert_array_equal(out, labels if expected is None else np.full_like(labels, expected))


# The merge

def test_merging_joins_a_split_uniform_region_but_not_across_a_strong_edge():
    image, segments = _strips([(200, 40, 40), (200, 40, 40), (40, 40, 200), (40, 40, 200)])
    merged = sp.merge_regions(image, segments, SP)
    first = merged[0, ::8]     # one pixel per strip
    assert first[0] == first[1] and first[2] == first[3]
    assert first[1] != first[2]
    assert merged.max() == 1


def test_regions_from_slic_follow_the_colour_edge():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :30] = (90, 160, 60)
    image[:, 30:] = (60, 60, 140)
    image = _noisy(image, amount=6)
    regions = sp.regions(image, {**SP, "n_segments": 24})
    assert sp.over_segment(image, {**SP, "n_segments": 24}).max() >= 8   # the over-segmentation split each side
    assert len(np.unique(regions[:, :30])) == 1 and len(np.unique(regions[:, 30:])) == 1
    assert regions[0, 0] != regions[0, -1]


@pytest.mark.parametrize("colours, together", [
    ([(100, 100, 100), (106, 106, 106), (120, 120, 120)], (0, 1)),
    ([(100, 100, 100), (114, 114, 114), (120, 120, 120)], (1, 2)),
])
def test_the_most_similar_pair_merges_first(colours, together):
    image, segments = _strips(colours)
    # Both pairs clear the threshold; the target count allows one merge: the order decides.
    merged = sp.merge_regions(image, segments, {**SP, "threshold": 0.0, "target_regions": 2})
    first = merged[0, ::8]
    a, b = together
    assert first[a] == first[b]
    assert len(set(first)) == 2


def test_the_threshold_stops_merging():
    image, segments = _strips([(100, 100, 100), (106, 106, 106), (120, 120, 120)])
    assert sp.merge_regions(image, segments, {**SP, "threshold": 1.0}).max() == 2


def test_similarity_weighs_content_more_as_regions_grow():
    """A border with a strong edge between regions of equal colour statistics: small regions
    trust the edge (dissimilar), large ones the content (similar)."""
    def region(n):
        return sp.Region(n, np.full(3, 50.0) * n, np.full(3, 2600.0) * n, perimeter=100.0)
    border = [20.0, 20.0 * 40.0]   # 20 boundary pixels, mean edge 40
    small = sp.similarity(region(50), region(50), border, SP, superpixel_size=100.0)
    large = sp.similarity(region(50_000), region(50_000), border, SP, superpixel_size=100.0)
    assert small < 0.2 < 0.5 < large


# make_labels

CRF_OFF = {"iterations": 1, "gaussian_sxy": 3, "gaussian_compat": 0, "bilateral_sxy": 20, "bilateral_srgb": 10,
           "bilateral_compat": 0}   # no pairwise terms: the CRF returns the maps' argmax, so only superpixels snap
CFG = {"bg_threshold": 0.4, "temperature": 0.1, "uncertain_margin": 0.05, "saliency_dir": "",
       "saliency_threshold": 0.5, "claim_threshold": 0.5, "crf": CRF_OFF}


def test_make_labels_with_superpixels_snaps_a_blob_to_the_object():
    image = np.full((48, 48, 3), (70, 110, 60), np.uint8)
    image[12:36, 12:36] = (220, 200, 40)
    image = _noisy(image, amount=4)
    truth = np.zeros((48, 48), bool)
    truth[12:36, 12:36] = True
    maps = np.zeros((1, 48, 48), np.float32)
    maps[0, 16:40, 8:32] = 0.9            # the map's blob: shifted 4 px down and left
    maps[0, 20:24, 20:24] = 0.42          # and an uncertain hole in it
    plain = make_labels(image, maps, [4], CFG)
    timing = {}
    snapped = make_labels(image, maps, [4], {**CFG, "superpixels": {**SP, "n_segments": 36}}, timing=timing)
    assert ((plain == 4) != truth).mean() > 0.1 and (plain == 255).any()
    np.testing.assert_array_equal(snapped, np.where(truth, 4, 0))
    assert timing["superpixels"] > 0


def test_make_labels_without_the_option_is_unchanged():
    image = _noisy(np.full((16, 16, 3), 128, np.uint8))
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, :, :6] = 0.9
    off = {**CFG, "superpixels": {**SP, "enabled": False}}
    np.testing.assert_array_equal(make_labels(image, maps, [7], off), make_labels(image, maps, [7], CFG))


# params.yaml

@pytest.mark.parametrize("key, value, message", [
    ("vote_min", 1.5, "pseudo_labels.superpixels.vote_min: 1.5 is above the maximum"),
    ("n_segments", 1, "pseudo_labels.superpixels.n_segments: 1 is below the minimum"),
    ("undecided", "drop", "pseudo_labels.superpixels.undecided: 'drop' is not one of"),
    ("enabled", "yes", "pseudo_labels.superpixels.enabled: expected bool"),
    ("colour_floor", 0.0, "pseudo_labels.superpixels.colour_floor: 0.0 is below the minimum"),
    ("segments", 100, "pseudo_labels.superpixels.segments: unknown key"),
])
def test_bad_superpixel_params_name_the_dotted_key(key, value, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    bad = copy.deepcopy(raw)
    bad["pseudo_labels"]["superpixels"][key] = value
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert message in str(err.value)


def test_the_shipped_superpixel_section_is_the_default():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert validate(raw)["pseudo_labels"]["superpixels"] == DEFAULTS["pseudo_labels"]["superpixels"]
