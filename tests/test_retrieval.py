"""Image search (wsss/retrieval/, commands search and near-duplicates): SBA's proposals and detectors,
unit descriptors, a copy found as its original's nearest neighbour, planted duplicates found by
both commands, and a clear error for a bad query. A tiny random network on 64 px images."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from wsss.commands.cli import app
from wsss.dataset import voc
from wsss.dataset.images import palette_png
from models.classifier import CAMClassifier
from models.networks import to_config
from models.registry import BACKBONES
from wsss.retrieval import descriptors as D
from wsss.retrieval import neighbours
from wsss.stores.atomic import write_parquet
from wsss.training import checkpoints

from tests.conftest import REPO

SIZE = 64


class MirrorNet(nn.Module):
    """A tiny random backbone whose 3x3 kernels are left-right symmetric, with stride-1 convs and 2x2
    average pooling: its feature map of a mirrored image is exactly the mirrored feature map (as a
    network trained with flip augmentation roughly is), so any flip-sensitivity a test sees comes
    from the descriptor code, not from the random weights."""

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out_channels = 64

    def __init__(self, pretrained: bool = False, output_stride: int = 16, drs=None, placement=None):
        super().__init__()
        widths, layers = [3, 16, 32, 64, 64], []
        for a, b in zip(widths, widths[1:]):
            conv = nn.Conv2d(a, b, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
            layers += [conv, nn.ReLU(), nn.AvgPool2d(2)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@pytest.fixture(scope="module", autouse=True)
def mirror_backbone():
    """Registered for this module only: the commands rebuild the classifier from its checkpoint by name."""
    BACKBONES._items["mirror_test"] = MirrorNet
    yield
    BACKBONES._items.pop("mirror_test", None)


def localizer(seed: int = 0) -> CAMClassifier:
    torch.manual_seed(seed)
    return CAMClassifier(n_classes=3, backbone="mirror_test", pretrained=False, extra_convs=0).eval()


def blobs(rng, w=SIZE, h=SIZE, cells=4) -> np.ndarray:
    """A random smooth colour field: random images that differ in colour and layout."""
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def tiny_settings(method="sba", **kw):
    return D.Settings(**{"method": method, "long_side": SIZE, "detectors": 8, "whiten_dim": 0, "batch_size": 4,
                         **kw})


@pytest.fixture(scope="module")
def model():
    return localizer()


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(1)
    return [blobs(rng) for _ in range(10)]


# ---------------------------------------------------------------- SBA's parts


def test_proposals_are_non_negative_and_sum_to_one():
    torch.manual_seed(0)
    features = torch.randn(3, 16, 5, 7)          # negative responses too
    features[1, 4] = -1.0                        # a detector silent on image 1
    p = D.proposals(features, [4, 0, 9], power=0.5)
    assert p.shape == (3, 3, 5, 7)
    assert (p >= 0).all()
    assert torch.allclose(p.sum(dim=(2, 3)), torch.ones(3, 3), atol=1e-6)
    # a proposal is the detector's rectified response ** power, normalised: zero where it is silent
    expected = features[0, 9].clamp_min(0) ** 0.5
    assert torch.allclose(p[0, 2], expected / expected.sum(), atol=1e-6)
    assert (p[0, 2][features[0, 9] <= 0] == 0).all()
    assert torch.allclose(p[1, 0], torch.full((5, 7), 1 / 35))   # silent detector: uniform, still sums to 1


def test_regional_features_are_proposal_weighted_sums():
    torch.manual_seed(1)
    features = torch.rand(2, 6, 4, 4)
    d = D.sba(features, [1, 3], power=1.0, aggregate="concat")
    assert d.shape == (2, 12)
    w = features[0, 3] / features[0, 3].sum()
    assert torch.allclose(d[0, 6:], (features[0] * w).sum(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(D.sba(features, [1, 3], 1.0, "sum"), d[:, :6] + d[:, 6:], atol=1e-6)


def test_descriptor_changes_when_the_selected_detectors_change(model, scenes):
    settings = tiny_settings(aggregate="concat")
    feats = D.extract(model, scenes[:2], settings, torch.device("cpu"), ["mean"])["mean"]
    by_variance = D.select_detectors(feats, 8, "variance")
    a = D.extract(model, scenes[:2], settings, torch.device("cpu"), ["sba"], by_variance)["sba"]
    other = np.setdiff1d(np.arange(feats.shape[1]), by_variance)[:8]
    b = D.extract(model, scenes[:2], settings, torch.device("cpu"), ["sba"], other)["sba"]
    assert a.shape == b.shape == (2, 8 * model.backbone.out_channels)
    assert not np.allclose(D.l2_normalise(a), D.l2_normalise(b), atol=1e-3)
    # the order of the detectors is the order of the concatenation
    c = D.extract(model, scenes[:2], settings, torch.device("cpu"), ["sba"], by_variance[::-1])["sba"]
    assert not np.allclose(a, c) and np.allclose(np.sort(a, axis=1), np.sort(c, axis=1), atol=1e-5)
    summed = [D.extract(model, scenes[:2], D.Settings(**{**settings.to_dict(), "aggregate": "sum"}),
                        torch.device("cpu"), ["sba"], det)["sba"] for det in (by_variance, other)]
    assert not np.allclose(D.l2_normalise(summed[0]), D.l2_normalise(summed[1]), atol=1e-3)


def test_detector_selection_is_by_variance_or_frequency():
    rng = np.random.default_rng(0)
    responses = rng.random((50, 10)) * 0.01
    responses[:, 7] += rng.random(50) * 5           # varies most
    responses[:, 2] += 3.0                          # always strongest, constant
    assert D.select_detectors(responses, 1, "variance")[0] == 7
    assert D.select_detectors(responses, 1, "frequency")[0] == 2
    assert sorted(D.select_detectors(responses, 2, "frequency")) == [2, 7]


def test_rmac_regions_lie_inside_the_map_and_cover_several_scales():
    for h, w in ((12, 16), (16, 12), (9, 9), (3, 5)):
        regions = D.rmac_regions(h, w, levels=3)
        assert regions[0] == (0, 0, -1)
        for top, left, side in regions[1:]:
            assert 0 <= top and top + side <= h and 0 <= left and left + side <= w
        assert len({side for _, _, side in regions[1:]}) >= 2 or min(h, w) < 4
    f = torch.zeros(1, 2, 12, 16)
    f[0, 0, 0, 0] = 1.0                             # a corner peak: the whole map and the corner regions see it
    assert D.rmac(f, 3)[0, 0] > D.mac(f)[0, 0]


@pytest.mark.parametrize("method", D.METHODS)
def test_descriptors_are_unit_norm(model, scenes, method):
    settings = tiny_settings(method, whiten_dim=4)
    desc, detectors, whitening = D.describe(model, scenes, settings, torch.device("cpu"))
    assert desc.shape == (len(scenes), 4) and whitening is not None
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    assert (len(detectors) == 8) == (method == "sba")


@pytest.mark.parametrize("method", D.METHODS)
def test_a_flipped_resized_copy_is_its_originals_nearest_neighbour(model, scenes, method):
    settings = tiny_settings(method, whiten_dim=4)
    desc, detectors, whitening = D.describe(model, scenes, settings, torch.device("cpu"))
    original = 3
    copy = np.asarray(Image.fromarray(scenes[original][:, ::-1]).resize((SIZE * 3 // 2, SIZE * 3 // 2), Image.BILINEAR))
    raw = D.extract(model, [copy], settings, torch.device("cpu"), [method], detectors)[method]
    found = neighbours.search(desc, D.finish(raw, whitening)[0], k=3)
    assert found[0][0] == original, found
    assert found[0][1] > 0.99 and found[1][1] < found[0][1] - 0.05, found


def hand_written_whitening(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) as the whitening was computed by hand: principal directions from the
    eigendecomposition of the centred Gram matrix, each divided by its standard deviation."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh((centred @ centred.T).astype(np.float64))
    order = np.argsort(-eigval)
    eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
    keep = min(dim, int(np.count_nonzero(eigval > eigval.max() * 1e-10)))
    singular = np.sqrt(eigval[:keep])
    directions = (eigvec[:, :keep].T @ centred.astype(np.float64)) / singular[:, None]
    return mean, (directions.T / (singular / np.sqrt(len(x) - 1))).astype(np.float32)


@pytest.mark.parametrize("n, dims", [(40, [4, 16]), (6, [8])])   # 6 images: capped at their rank, 5
def test_whitening_is_the_hand_written_one_up_to_sign(n, dims):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = D.l2_normalise(rng.normal(size=(n, 48)) * np.geomspace(4, 0.1, 48) + rng.normal(size=48))
    queries = D.l2_normalise(rng.normal(size=(5, 48)) + rng.normal(size=48))
    fitted = D.Whitening.fit_many(x, dims)
    for dim in dims:
        mean, projection = hand_written_whitening(x, dim)
        w = fitted[dim]
        assert w.projection.shape == projection.shape == (48, min(dim, n - 1))
        np.testing.assert_allclose(w.mean, mean, atol=1e-6)
        # each direction's sign is the decomposition's choice; whitened coordinates agree up to it
        old, new = (queries - mean) @ projection, w(queries)
        signs = np.sign((old * new).sum(0))
        np.testing.assert_allclose(new * signs, old, rtol=1e-4, atol=1e-4)
        # and the search sees the same cosines (signs cancel in dot products)
        a, b = D.finish(queries, w), D.l2_normalise(old)
        np.testing.assert_allclose(a @ D.finish(x, w).T, b @ D.l2_normalise((x - mean) @ projection).T, atol=1e-4)
        # it is PCA(whiten=True)'s transform
        pca = PCA(n_components=w.projection.shape[1], whiten=True, svd_solver="full").fit(x)
        np.testing.assert_allclose(w(queries), pca.transform(queries), rtol=1e-4, atol=1e-4)


def test_nearest_neighbours_for_groups():
    rng = np.random.default_rng(0)
    x = D.l2_normalise(rng.normal(size=(6, 16)))
    x[4] = D.l2_normalise(x[1] + 0.01 * rng.normal(size=16))   # a near copy of image 1
    ids = [f"im{i}" for i in range(6)]
    groups = neighbours.nearest_neighbours(x, ids, k=2)
    assert set(groups) == set(ids)
    assert groups["im1"][0][0] == "im4" and groups["im4"][0][0] == "im1" and groups["im1"][0][1] > 0.99
    assert all(len(v) == 2 and all(n != i for n, _ in v) for i, v in groups.items())
    assert all(v[0][1] >= v[1][1] for v in groups.values())
    only_close = neighbours.nearest_neighbours(x, ids, k=2, min_score=0.99)
    assert only_close["im1"] == groups["im1"][:1] and only_close["im0"] == []


# ---------------------------------------------------------------- the commands


def write_dataset(root, n_train=6, n_val=3):
    """VOC layout: random colour-field images, masks with one or two classes; val image 1 is a
    JPEG re-encode (quality 75) of train image 2."""
    rng = np.random.default_rng(5)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"{split}_{i}" for i in range(n)]
        for k, image_id in enumerate(ids):
            Image.fromarray(blobs(rng, SIZE, SIZE * 3 // 4)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            mask = np.zeros((SIZE * 3 // 4, SIZE), np.uint8)
            mask[4:30, 4:40] = 1 + k % 2
            if k % 3 == 0:
                mask[30:44, 40:60] = 2
            palette_png(mask).save(root / "SegmentationClass" / f"{image_id}.png")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    Image.open(root / "JPEGImages" / "train_2.jpg").save(root / "JPEGImages" / "val_1.jpg", quality=75)
    shutil.copy(root / "SegmentationClass" / "train_2.png", root / "SegmentationClass" / "val_1.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The dataset above, its manifest, an untrained tiny classifier's checkpoint and params that
    point the search at them (whitening learned on the 9 images, 4 dims)."""
    base = tmp_path_factory.mktemp("search")
    write_dataset(base / "data")
    table, classes = voc.scan(base / "data", ["train", "val"], workers=1)
    write_parquet(table, base / "manifest.parquet")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    section = {**values["classifier"], "backbone": "mirror_test", "pretrained": False, "extra_convs": 0}
    torch.manual_seed(0)
    net = CAMClassifier.from_config(section, len(classes) - 1).eval()
    checkpoints.save(base / "classifier.pt", net, to_config("localizer", section, classes))
    values["search"].update(long_side=SIZE, detectors=8, whiten_dim=4, device="cpu", index=str(base / "index.npz"))
    (base / "params.yaml").write_text(yaml.safe_dump(values))
    return base


def results(output: str) -> list[tuple[int, str, float]]:
    """(rank, id, score) of the search command's result lines."""
    return [(int(m[1]), m[2], float(m[3])) for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s+(-?[0-9.]+)\s", output, re.M)]


def run(workspace, *args):
    common = ["--params", workspace / "params.yaml", "--manifest", workspace / "manifest.parquet",
              "--checkpoint", workspace / "classifier.pt"]
    return CliRunner().invoke(app, [str(a) for a in (*args, *common)])


def test_search_finds_a_planted_duplicate_and_draws_the_contact_sheet(workspace, tmp_path):
    query = tmp_path / "holiday photo.png"
    original = Image.open(workspace / "data" / "JPEGImages" / "train_4.jpg")
    original.transpose(Image.FLIP_LEFT_RIGHT).resize((96, 72)).save(query)   # a flipped, enlarged copy
    sheet = tmp_path / "sheets" / "result.png"
    result = run(workspace, "search", query, "--k", 3, "--out", sheet)
    assert result.exit_code == 0, result.output
    found = results(result.output)
    assert [r[0] for r in found] == [1, 2, 3], result.output
    assert found[0][1] == "train_4" and found[0][2] > 0.95 > found[1][2], result.output
    assert all(image_id.startswith("train_") for _, image_id, _ in found)   # training images only by default
    with Image.open(sheet) as png:
        assert png.format == "PNG" and png.width > 3 * 100
    assert (workspace / "index.npz").is_file()

    by_id = run(workspace, "search", "val_1", "--k", 2, "--out", tmp_path / "by_id.png")
    assert by_id.exit_code == 0, by_id.output
    assert results(by_id.output)[0][1] == "train_2"                     # its planted original
    itself = run(workspace, "search", "train_2", "--k", 9, "--split", "all", "--out", tmp_path / "self.png")
    assert [r[1] for r in results(itself.output)][0] == "val_1" and "train_2" not in [r[1] for r in results(itself.output)]


def test_near_duplicate_report_lists_the_planted_pair_only(workspace, tmp_path):
    out = tmp_path / "dups"
    result = run(workspace, "near-duplicates", "--threshold", 0.98, "--out-dir", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "pairs.json").read_text())
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("train_2", "val_1")], report["pairs"]
    assert report["n_images"] == 9 and len(report["best_val_to_train"]["histogram"]["counts"]) == 20
    assert (out / "pairs.csv").read_text().splitlines()[1].startswith("train_2,train,val_1,val,")
    with Image.open(out / "top_pairs.png") as png:
        assert png.format == "PNG"
    # the pair is the clear outlier: every other train/val pair scores lower
    rest = run(workspace, "near-duplicates", "--threshold", -1.0, "--out-dir", tmp_path / "all")
    pairs = json.loads((tmp_path / "all" / "pairs.json").read_text())["pairs"]
    assert len(pairs) == 6 * 3 and (pairs[0]["a"], pairs[0]["b"]) == ("train_2", "val_1")
    assert rest.exit_code == 0 and pairs[1]["score"] < 0.98


def test_a_changed_setting_rebuilds_the_index(workspace, tmp_path):
    values = yaml.safe_load((workspace / "params.yaml").read_text())
    values["search"]["method"] = "mac"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    index = tmp_path / "index.npz"
    shutil.copy(workspace / "index.npz", index)
    result = CliRunner().invoke(app, ["search", "train_0", "--k", "1", "--params", str(params),
                                      "--manifest", str(workspace / "manifest.parquet"), "--index", str(index),
                                      "--checkpoint", str(workspace / "classifier.pt"),
                                      "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert "rebuilding" in result.output
    with np.load(index) as z:
        assert json.loads(str(z["meta"]))["settings"]["method"] == "mac"


def test_a_bad_query_is_a_clear_error(workspace, tmp_path):
    missing = run(workspace, "search", tmp_path / "no_such.jpg", "--index", tmp_path / "never.npz")
    assert missing.exit_code == 2
    assert "error:" in missing.output and "no_such.jpg" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "never.npz").exists()                       # refused before indexing anything
    unknown = run(workspace, "search", "no_such_id")
    assert unknown.exit_code == 2 and "no_such_id" in unknown.output and "9 indexed images" in unknown.output
    garbage = tmp_path / "notes.jpg"
    garbage.write_text("not an image")
    bad = run(workspace, "search", garbage)
    assert bad.exit_code == 2 and "notes.jpg" in bad.output and "not a readable image" in bad.output
