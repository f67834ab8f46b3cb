"""Peak response maps (wsss/localization/prm.py): peak stimulation in the classifier, peak
backpropagation, instances from peaks and regions, the instance store and `instance-pngs`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from wsss.commands import outputs
from wsss.commands.cli import app
from wsss.config.params import ParamsError, load
from wsss.localization import prm
from models.classifier import CAMClassifier, peak_mask, peak_stimulation
from wsss.stores import instancestore

from tests.conftest import REPO

P1, P2 = (2, 2), (6, 9)   # the two local maxima of two_peaks()


def two_peaks() -> torch.Tensor:
    """1 x 1 x 9 x 12: two Gaussian bumps (heights 3 and 2) on a positive background; no other
    local maximum, and no value underflows to a plateau."""
    y, x = torch.meshgrid(torch.arange(9.0), torch.arange(12.0), indexing="ij")
    bump = lambda p, a: a * torch.exp(-((y - p[0]) ** 2 + (x - p[1]) ** 2) / 8)  # noqa: E731
    return (bump(P1, 3.0) + bump(P2, 2.0) + 0.1)[None, None]


def test_peak_stimulation_is_the_mean_of_the_local_maxima_not_the_global_average():
    maps = two_peaks()
    mask = peak_mask(maps)[0, 0]
    assert sorted(map(tuple, torch.nonzero(mask).tolist())) == [P1, P2]
    score = peak_stimulation(maps)[0, 0]
    expected = (maps[0, 0][P1] + maps[0, 0][P2]) / 2
    assert score == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(score) - float(maps.mean())) > 1.0   # GAP would give the background's mean


def test_peak_stimulation_gradient_reaches_only_the_peaks():
    maps = two_peaks().requires_grad_(True)
    peak_stimulation(maps).sum().backward()
    grad = maps.grad[0, 0]
    assert float(grad[P1]) == pytest.approx(0.5) and float(grad[P2]) == pytest.approx(0.5)
    off = grad.clone()
    off[P1] = off[P2] = 0
    assert torch.count_nonzero(off) == 0


def test_a_plateau_counts_once_and_the_median_filter_drops_low_peaks():
    flat = torch.zeros(1, 1, 6, 6)
    assert int(peak_mask(flat, above_median=False).sum()) == 1   # one corner, not 36 peaks
    maps = two_peaks()
    maps[0, 0, 8, 0] = -5.0
    maps[0, 0, 8, 11] = 0.05        # a tiny local maximum below the median
    maps[0, 0, 7, 11] = maps[0, 0, 8, 10] = maps[0, 0, 7, 10] = 0.0
    assert bool(peak_mask(maps, above_median=False)[0, 0, 8, 11])
    assert not bool(peak_mask(maps)[0, 0, 8, 11])
    with pytest.raises(ValueError, match="odd"):
        peak_mask(maps, window=4)


def test_the_classifier_pools_by_peaks_when_asked():
    torch.manual_seed(0)
    gap = CAMClassifier(3, pretrained=False, extra_convs=0).eval()
    peaks = CAMClassifier(3, pretrained=False, extra_convs=0, pooling="peaks").eval()
    peaks.load_state_dict(gap.state_dict())
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        (g, maps), (p, maps2) = gap(x), peaks(x)
    assert torch.equal(maps, maps2)
    assert torch.allclose(g, maps.mean(dim=(2, 3)))
    assert torch.allclose(p, peak_stimulation(maps))
    with pytest.raises(ValueError, match="pooling"):
        CAMClassifier(3, pretrained=False, pooling="max")


@pytest.mark.parametrize("override, message", [
    ("classifier.pooling=max", "classifier.pooling: 'max' is not one of ['gap', 'peaks']"),
    ("classifier.peak_window=4", "classifier.peak_window: 4 is even"),
    ("maps.method=grad", "maps.method: 'grad' is not one of ['cam', 'prm']"),
    ("maps.prm.backprop=guided", "maps.prm.backprop: 'guided' is not one of"),
])
def test_bad_prm_params_name_the_key(override, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(REPO / "params.yaml", [override])


class TinyNet(nn.Module):
    """A CAM-style net: two 3x3 convs (the second strides 2), a 1x1 class conv; (logits, maps)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(4, 1, 1, bias=False)
        for conv in (self.conv1, self.conv2, self.classifier):
            nn.init.constant_(conv.weight, 0.1)
            if conv.bias is not None:
                nn.init.constant_(conv.bias, -0.5)

    def forward(self, x):
        maps = self.classifier(torch.relu(self.conv2(torch.relu(self.conv1(x / 255.0)))))
        return maps.mean(dim=(2, 3)), maps


def two_blobs_image() -> np.ndarray:
    image = np.zeros((32, 48, 3), np.uint8)
    image[6:12, 6:12] = 255     # blob A, centre about (8.5, 8.5)
    image[20:26, 34:40] = 255   # blob B, centre about (22.5, 36.5)
    return image


@pytest.mark.parametrize("backprop", ["gradient", "excitation"])
def test_peak_backprop_response_lies_near_its_own_peak(backprop):
    net = TinyNet().eval()
    x = torch.from_numpy(two_blobs_image()).permute(2, 0, 1).float()[None]
    found = prm.peak_responses(net, x, [0], window=3, max_peaks=5, threshold=0.5, backprop=backprop)
    assert len(found) == 2
    centres = {"A": np.array([8.5, 8.5]), "B": np.array([22.5, 36.5])}
    owners = []
    for _, _, response in found:
        r = response.numpy()
        assert r.shape == (32, 48) and r.min() >= 0 and r.sum() > 0
        ys, xs = np.nonzero(r)
        centre = np.array([np.average(ys, weights=r[ys, xs]), np.average(xs, weights=r[ys, xs])])
        near = min(centres, key=lambda k: np.linalg.norm(centre - centres[k]))
        assert np.linalg.norm(centre - centres[near]) < 4
        far = centres["B" if near == "A" else "A"].astype(int)
        assert r[far[0] - 3:far[0] + 3, far[1] - 3:far[1] + 3].sum() == 0   # nothing on the other blob
        owners.append(near)
    assert sorted(owners) == ["A", "B"]


def test_excitation_rule_keeps_forward_values_and_is_undone():
    net = TinyNet().eval()
    x = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        before = net(x)[1]
        with prm.excitation_backprop(net):
            during = net(x)[1]
        after = net(x)[1]
    assert torch.allclose(before, during) and torch.equal(before, after)
    assert "forward" not in vars(net.conv1)


def test_class_maps_are_image_sized_in_unit_range_with_one_peak_response_each():
    net = TinyNet().eval()
    cfg = {"max_peaks": 3, "peak_threshold": 0.5, "backprop": "excitation", "sigma": 2.0, "region_mean": False}
    maps, peaks = prm.class_maps(net, two_blobs_image(), [1], [1.0], False, torch.device("cpu"), cfg, 3)
    assert maps.shape == (1, 32, 48) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    assert len(peaks) == 2 and all(p.cls == 1 and p.response.max() == pytest.approx(1.0) for p in peaks)
    assert maps[0, 8, 8] > 0.5 and maps[0, 22, 36] > 0.5 and maps[0, 28, 4] < 0.05


def test_region_mean_makes_class_maps_follow_the_regions():
    net = TinyNet().eval()
    cfg = {"max_peaks": 3, "peak_threshold": 0.5, "backprop": "excitation", "sigma": 2.0, "region_mean": True}
    regions = grid_regions()
    maps, _ = prm.class_maps(net, two_blobs_image(), [1], [1.0], False, torch.device("cpu"), cfg, 3, regions)
    assert maps.max() == pytest.approx(1.0)
    for label in np.unique(regions):
        values = maps[0][regions == label]
        assert np.ptp(values) < 1e-6   # one value per region
    plain, _ = prm.class_maps(net, two_blobs_image(), [1], [1.0], False, torch.device("cpu"),
                              {**cfg, "region_mean": False}, 3, regions)
    assert np.ptp(plain[0][regions == regions[8, 8]]) > 1e-3


def blob(center, shape=(32, 48), sigma=3.0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((y - center[0]) ** 2 + (x - center[1]) ** 2) / (2 * sigma ** 2))


def grid_regions(shape=(32, 48), cell=4):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return ((y // cell) * (shape[1] // cell) + x // cell).astype(np.int32)


def test_instances_separate_two_separated_blobs():
    prms = np.stack([blob((8, 8)), blob((22, 36))])
    found = prm.instances(prms, [3, 3], [2.0, 1.0], grid_regions(), fraction=0.3, nms_iou=0.5)
    assert len(found) == 2
    (c0, s0, m0), (c1, s1, m1) = found
    assert c0 == c1 == 3 and s0 > s1
    assert m0[8, 8] and not m0[22, 36] and m1[22, 36] and not m1[8, 8]
    assert not (m0 & m1).any()
    assert 0 < s0 <= 2.0 and 0 < s1 <= 1.0   # peak score x the share of the response inside


def test_instances_nms_keeps_the_best_duplicate_and_spares_other_classes():
    prms = np.stack([blob((8, 8)), blob((8, 9)), blob((8, 8))])
    found = prm.instances(prms, [3, 3, 5], [1.0, 2.0, 0.5], grid_regions())
    assert [(c, round(s, 6) > 0) for c, s, _ in found] == [(3, True), (5, True)]
    assert found[0][1] > 1.0    # the score-2 duplicate survived
    assert prm.instances(np.zeros((1, 32, 48)), [1], [1.0], grid_regions()) == []
    with pytest.raises(ValueError, match="regions"):
        prm.instances(prms, [3, 3, 5], [1, 1, 1], grid_regions()[:8])


def test_instance_store_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    records = [("a", [(3, 0.9, rng.random((5, 7)) > 0.5), (1, 0.2, rng.random((5, 7)) > 0.5)]),
               ("b", [(2, 0.5, rng.random((9, 3)) > 0.5)])]
    path = tmp_path / "instances.parquet"
    assert instancestore.write(records, path, ["bg", "x", "y", "z"]) == 3
    back = list(instancestore.read(path))
    assert [i for i, _ in back] == ["a", "b"]
    for (_, want), (_, got) in zip(records, back):
        for (c, s, m), (c2, s2, m2) in zip(want, got, strict=True):
            assert c == c2 and s2 == pytest.approx(s) and np.array_equal(m, m2)
    assert instancestore.classes(path) == ["bg", "x", "y", "z"]
    with pytest.raises(FileNotFoundError):
        list(instancestore.read(tmp_path / "none.parquet"))


def test_instance_pngs_command_writes_id_maps_and_json_and_refuses_foreign_files(tmp_path):
    masks = [np.zeros((6, 8), bool), np.zeros((6, 8), bool)]
    masks[0][:3, :4] = True
    masks[1][2:, 3:] = True   # overlaps the first at (2, 3): the better first instance wins
    store = tmp_path / "maps" / "instances.parquet"
    store.parent.mkdir()
    instancestore.write([("im0", [(2, 0.8, masks[0]), (1, 0.3, masks[1])])], store, ["background", "cat", "dog"])
    out = tmp_path / "pngs"
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    done = run("instance-pngs", out, "--instances", store)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == sorted([outputs.MANIFEST, "im0.png", "im0.json"])
    ids = np.array(Image.open(out / "im0.png"))
    assert ids.shape == (6, 8) and ids[0, 0] == 1 and ids[2, 3] == 1 and ids[5, 7] == 2 and ids[5, 0] == 0
    info = json.loads((out / "im0.json").read_text())
    assert [(i["id"], i["class"], i["class_name"]) for i in info["instances"]] == [(1, 2, "dog"), (2, 1, "cat")]
    assert info["instances"][0]["score"] == pytest.approx(0.8) and info["instances"][1]["pixels"] == int((ids == 2).sum())
    assert run("instance-pngs", out, "--instances", store).exit_code == 0   # its own output: replaced
    (out / "mine.txt").write_text("keep")
    refused = run("instance-pngs", out, "--instances", store)
    assert refused.exit_code == 2 and "did not write (mine.txt)" in refused.stderr
    assert (out / "mine.txt").read_text() == "keep"
    inside = run("instance-pngs", store.parent / "x", "--instances", store)
    assert inside.exit_code == 2 and "inside the input folder" in inside.stderr
    missing = run("instance-pngs", tmp_path / "new", "--instances", tmp_path / "none.parquet")
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_export_maps_with_prm_writes_maps_instances_and_reports(tmp_path, monkeypatch):
    """A peaks-pooled classifier trained for one epoch on demo images, then the PRM export: maps in
    the map store and scored, instances.parquet beside the shards, overlays and the contact sheet;
    a cam export afterwards leaves no stale instances behind."""
    import importlib

    from wsss.dataset import demo
    from wsss.stores import mapstore
    from tests.test_pipeline_dvc import SMALL

    monkeypatch.setenv("WSSS_TRACKING", "off")
    root = tmp_path / "data"
    demo.generate(root, seed=0, n_train=4, n_val=2, image_size=64)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    base = SMALL + [f"data.root={root}", "classifier.pooling=peaks", "classifier.pretrained=false",
                    "classifier.device=cpu", "maps.n_overlays=2", "maps.prm.n_contact=3"]
    params = load(REPO / "params.yaml", base + ["maps.method=prm", "maps.prm.sigma=2.0", "maps.prm.region_scale=50"])
    for stage in ("manifest", "train_classifier", "export_maps"):
        importlib.import_module(f"tasks.{stage}").main(params)
    metrics = json.loads((work / "metrics/maps.json").read_text())
    assert metrics["method"] == "prm" and metrics["n_images"] == 4 and metrics["n_evaluated"] == 4
    assert metrics["n_peaks"] >= 4 and "miou" in metrics and metrics["seconds_per_image"] > 0
    stored = list(mapstore.read(work / "artifacts/maps"))
    assert len(stored) == 4 and all(m.shape[0] == len(c) and m.max() <= 1 for _, c, m in stored)
    found = list(instancestore.read(work / "artifacts/maps/instances.parquet"))
    assert sum(len(f) for _, f in found) == metrics["n_instances"] > 0
    ids = {i for i, _, _ in stored}
    assert {i for i, _ in found} <= ids
    reports = sorted(p.name for p in (work / "reports/maps").iterdir())
    assert prm.CONTACT_SHEET in reports and sum(n.endswith("_instances.png") for n in reports) == 2

    importlib.import_module("tasks.export_maps").main(load(REPO / "params.yaml", base))
    assert not (work / "artifacts/maps/instances.parquet").exists()
    assert json.loads((work / "metrics/maps.json").read_text())["method"] == "cam"


def test_merged_region_proposals_come_from_the_superpixel_merging():
    """regions: merged uses wsss/labelling/superpixels.py: two flat halves give two regions."""
    import numpy as np
    from wsss.config.params import DEFAULTS
    from wsss.localization.prm import proposal_regions
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 255
    cfg = {**DEFAULTS["maps"]["prm"], "regions": "merged", "region_scale": 50}
    regions = proposal_regions(image, cfg)
    assert len(np.unique(regions)) == 2 and len(np.unique(regions[:, :30])) == 1
