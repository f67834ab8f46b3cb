"""Few masks (train_semi, wsss/semi/): which images are masked, that no other training mask is read,
the mixed batches, the disabled stage, and every method end to end on a tiny dataset."""
import json

import numpy as np
import pytest
import torch

from wsss.config.params import ParamsError, load
from wsss.dataset import voc
from wsss.semi import masks as semi_masks
from wsss.semi.data import MixedBatches, masked_per_batch
from wsss.stores import labelstore
from tasks import manifest, train_semi
from tests.conftest import REPO
from wsss.training import checkpoints
from wsss.training.segmentation import predict_probs

TINY = ["segmenter.pretrained=false", "segmenter.head=aspp", "segmenter.aspp_channels=8", "segmenter.aspp_rates=[1, 2]",
        "segmenter.epochs=1", "segmenter.batch_size=2", "segmenter.crop_size=32", "segmenter.resize_long=[40, 56]",
        "segmenter.val_scales=[1.0]", "segmenter.val_flip=false", "segmenter.loss_stride=1", "segmenter.device=cpu",
        "segmenter.precision=fp32", "semi.enabled=true", "semi.masks=2", "semi.init=as_segmenter",
        "semi.cyclegan.size=16", "semi.cyclegan.generator_width=4", "semi.cyclegan.discriminator_width=4"]


def rows(n: int, without_mask=()):
    return [{"id": f"im{i}", "has_mask": f"im{i}" not in without_mask} for i in range(n)]


def test_a_count_is_a_seeded_choice_and_smaller_counts_are_subsets():
    r = rows(40)
    ten, thirty = semi_masks.choose(r, 10, 0, "train"), semi_masks.choose(r, 30, 0, "train")
    assert len(ten) == 10 and set(ten) <= set(thirty)
    assert ten == semi_masks.choose(r, 10, 0, "train")          # the seed decides
    assert ten != semi_masks.choose(r, 10, 1, "train")
    assert ten == [i["id"] for i in r if i["id"] in set(ten)]     # split order
    assert semi_masks.choose(r, 0, 0, "train") == []
    # images without a mask are never chosen
    assert "im3" not in semi_masks.choose(rows(5, without_mask={"im3"}), 4, 0, "train")


def test_a_balanced_choice_covers_every_tagged_class_before_repeating_one():
    # 16 person-only images and one each of classes 1..3 (with a person): a random 4 mostly misses some
    r = [{"id": f"p{i}", "has_mask": True, "tags": [15]} for i in range(16)]
    r += [{"id": f"c{c}", "has_mask": True, "tags": [c, 15]} for c in (1, 2, 3)]
    for seed in range(5):
        four = semi_masks.choose(r, 4, seed, "train", "balanced")
        assert {"c1", "c2", "c3"} <= set(four)            # each rare class is masked once
        assert set(semi_masks.choose(r, 2, seed, "train", "balanced")) <= set(four)   # prefix-stable
        assert four == semi_masks.choose(r, 4, seed, "train", "balanced")
    assert semi_masks.balanced_order([[1], [1], [2], [1, 2], [3]], 3) == [0, 2, 4, 1, 3]
    assert semi_masks.balanced_order([[], [1]], 1) == [1, 0]   # an untagged image comes last
    with pytest.raises(ParamsError, match=r"semi\.choice: is balanced, but semi.masks is a list of ids"):
        load(REPO / "params.yaml", ["semi.choice=balanced", "semi.masks=[im0, im1]"])
    assert load(REPO / "params.yaml", ["semi.choice=balanced"])["semi"]["choice"] == "balanced"
    with pytest.raises(ValueError, match="semi.choice: unknown 'best'"):
        semi_masks.choose(r, 4, 0, "train", "best")


def test_a_list_of_ids_is_checked_against_the_split():
    r = rows(5, without_mask={"im4"})
    assert semi_masks.choose(r, ["im2", "im0"], 0, "train") == ["im0", "im2"]
    with pytest.raises(voc.DataError, match=r"'nope' is not in the train split 'train'"):
        semi_masks.choose(r, ["im0", "nope"], 0, "train")
    with pytest.raises(voc.DataError, match=r"'im4' has no mask"):
        semi_masks.choose(r, ["im4"], 0, "train")
    with pytest.raises(voc.DataError, match="6 masks asked for, but only 4 images"):
        semi_masks.choose(r, 6, 0, "train")


def test_ids_file_round_trip(tmp_path):
    semi_masks.write_ids(tmp_path / "ids.txt", ["a", "b"], "two images\nsecond line")
    assert semi_masks.read_ids(tmp_path / "ids.txt") == ["a", "b"]
    assert (tmp_path / "ids.txt").read_text().startswith("# two images\n# second line\n")


def test_the_mask_reader_refuses_unlisted_ids_without_reading_them(voc_fixture, monkeypatch):
    read = []
    real = voc.load_mask
    monkeypatch.setattr(voc, "load_mask", lambda root, i, n: read.append(i) or real(root, i, n))
    reader = semi_masks.MaskReader(voc_fixture, ["tr1"], 3)
    assert reader("tr1").shape == (40, 50) and "tr1" in reader and "tr0" not in reader
    with pytest.raises(semi_masks.UnlistedMask, match=r"image 'tr0' is not one of the 1 masked images"):
        reader("tr0")
    assert read == ["tr1"]


def test_mixed_batches_hold_the_share_of_masked_images_and_cycle_through_them():
    sampler = MixedBatches(3, 10, 4, 0.5, steps=6, seed=0)
    batches = list(sampler)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    assert all(sum(i < 3 for i in b) == 2 for b in batches)
    drawn = [i for b in batches for i in b if i < 3]
    assert sorted(drawn[:3]) == [0, 1, 2] and sorted(drawn[3:6]) == [0, 1, 2]   # each once before any twice
    assert {i for b in batches for i in b if i >= 3} <= set(range(3, 13))
    assert masked_per_batch(3, 0, 8, 0.5) == 8 and masked_per_batch(0, 5, 8, 0.5) == 0
    assert masked_per_batch(3, 5, 8, 0.01) == 1 and masked_per_batch(3, 5, 8, 1.0) == 8


def test_params_say_what_a_method_needs():
    base = load(REPO / "params.yaml")
    assert base["semi"]["enabled"] is False   # the shipped default stays weakly supervised
    with pytest.raises(ParamsError, match=r"semi\.masks: is 0, but semi.method masks_only"):
        load(REPO / "params.yaml", ["semi.masks=0", "semi.method=masks_only"])
    with pytest.raises(ParamsError, match=r"semi\.masks: is 0, but semi.method cyclegan"):
        load(REPO / "params.yaml", ["semi.masks=0", "semi.method=cyclegan"])
    with pytest.raises(ParamsError, match=r"semi\.pseudo_weight: is 0, but semi.method masks\+pseudo"):
        load(REPO / "params.yaml", ["semi.pseudo_weight=0", "semi.method=masks+pseudo"])
    assert load(REPO / "params.yaml", ["semi.pseudo_weight=0"])["semi"]["method"] == "cutmix"   # the teacher alone
    with pytest.raises(ParamsError, match=r"semi\.pseudo_weight: is 0, but semi.method dual_branch"):
        load(REPO / "params.yaml", ["semi.pseudo_weight=0", "semi.method=dual_branch"])
    with pytest.raises(ParamsError, match=r"semi\.masks: image 'a' is listed twice"):
        load(REPO / "params.yaml", ["semi.masks=[a, b, a]"])
    with pytest.raises(ParamsError, match=r"semi\.masks: expected a count"):
        load(REPO / "params.yaml", ["semi.masks=lots"])
    with pytest.raises(ParamsError, match=r"semi\.method: 'magic' is not one of"):
        load(REPO / "params.yaml", ["semi.method=magic"])
    assert load(REPO / "params.yaml", ["semi.masks=[a, b]"])["semi"]["masks"] == ["a", "b"]


def test_disabled_stage_writes_every_declared_output_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSSS_TRACKING", "off")
    result = train_semi.main(load(REPO / "params.yaml"))
    assert result["enabled"] is False and result["n_masks"] == 0
    assert json.loads((tmp_path / "metrics/semi.json").read_text())["supervision"] == "none"
    assert semi_masks.read_ids(tmp_path / "artifacts/semi/masked_ids.txt") == []
    assert "nothing trained" in (tmp_path / "artifacts/semi/segmenter.pt").read_text()
    assert (tmp_path / "reports/semi/README.txt").exists()
    assert (tmp_path / "plots/semi_train.csv").read_text() == "epoch,loss,seconds\n"
    assert (tmp_path / "plots/semi_per_class.csv").read_text() == "class,iou\n"


def workspace(tmp_path, voc_fixture, monkeypatch, extra=()):
    """A stage workspace on the fixture dataset: manifest, and pseudo labels for every train image."""
    monkeypatch.chdir(tmp_path)
    params = load(REPO / "params.yaml", [f"data.root={voc_fixture}", *TINY, *extra])
    manifest.main(params)
    labels = [(i, np.where(np.arange(50)[None, :] < 25, 1, 0).repeat(40, 0).astype(np.uint8))
              for i in voc.read_split(voc_fixture, "train")]
    labelstore.write(labels, tmp_path / "artifacts/pseudo_labels", 256)
    return params


@pytest.mark.parametrize("method", ["masks_only", "masks+pseudo", "dual_branch", "cotraining", "cyclegan", "cutmix"])
def test_each_method_reads_only_the_listed_training_masks(tmp_path, voc_fixture, monkeypatch, method):
    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = workspace(tmp_path, voc_fixture, monkeypatch, [f"semi.method={method}"])
    read = []
    real = voc.load_mask
    monkeypatch.setattr(voc, "load_mask", lambda root, i, n: read.append(i) or real(root, i, n))
    torch.manual_seed(0)
    result = train_semi.main(params)

    listed = semi_masks.read_ids(tmp_path / "artifacts/semi/masked_ids.txt")
    train, val = voc.read_split(voc_fixture, "train"), voc.read_split(voc_fixture, "val")
    assert len(listed) == 2 and set(listed) <= set(train)
    assert {i for i in read if i in train} == set(listed)     # the listed masks trained, no other train mask
    assert set(read) - set(train) == set(val)                 # val masks: scoring only
    assert result["supervision"] == "semi" and result["method"] == method and result["n_masks"] == 2
    assert result["n_unmasked"] == (0 if method == "masks_only" else 2)
    assert 0.0 <= result["val_miou"] <= 100.0 and result["step_seconds"] > 0
    saved = json.loads((tmp_path / "metrics/semi.json").read_text())
    assert saved["n_masks"] == 2 and saved["method"] == method
    model, config = checkpoints.load(tmp_path / "artifacts/semi/segmenter.pt", torch.device("cpu"))
    assert config["kind"] == ("segmenter_ensemble" if method == "cotraining" else "segmenter")
    probs = predict_probs(model, voc.load_image(voc_fixture, val[0]), torch.device("cpu"), False)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    if method == "cyclegan":
        assert 0 < result["generator_params"] < 10_000


def test_the_stage_tags_its_run_semi_supervised(tmp_path, voc_fixture, monkeypatch):
    from wsss.tracking import runs

    class Run:   # the stage run's interface, recording
        tags, metrics = {}, {}

        def set_tags(self, tags):
            self.tags.update(tags)

        def log_metrics(self, metrics, step):
            self.metrics.update(metrics)

        def log_artifact(self, path, artifact_path):
            pass

    params = workspace(tmp_path, voc_fixture, monkeypatch, ["semi.method=masks_only", "semi.epoch_images=2"])
    monkeypatch.setattr(runs, "_run", Run())
    train_semi.main(params)
    assert Run.tags == {"supervision": "semi", "semi.method": "masks_only", "semi.n_masks": 2, "semi.init": "as_segmenter"}
    assert Run.metrics["n_masks"] == 2 and "val_miou" in Run.metrics


@pytest.mark.slow   # MLflow's SQLite store: a minute or more here
def test_the_run_is_tagged_semi_supervised_in_mlflow(tmp_path, voc_fixture, monkeypatch):
    from tasks.__main__ import run_stage
    from wsss.tracking import runs

    params = workspace(tmp_path, voc_fixture, monkeypatch, ["semi.method=masks_only", "semi.epoch_images=2"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("WSSS_TRACKING", raising=False)
    run_stage("train_semi", params)
    client = runs.client()
    found = client.search_runs([runs.experiment_id(client)], filter_string="tags.supervision = 'semi'")
    assert len(found) == 1
    tags, metrics = found[0].data.tags, found[0].data.metrics
    assert tags["semi.n_masks"] == "2" and tags["semi.method"] == "masks_only" and metrics["n_masks"] == 2


@pytest.mark.parametrize("method", ["masks+pseudo", "dual_branch", "cotraining"])
def test_init_weak_segmenter_starts_every_segmenter_from_the_weak_one(tmp_path, voc_fixture, monkeypatch, method):
    from models.networks import to_config
    from models.segmenter import build_segmenter
    from wsss.semi import stage

    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = workspace(tmp_path, voc_fixture, monkeypatch, [f"semi.method={method}", "semi.init=weak_segmenter"])
    torch.manual_seed(7)
    weak = build_segmenter(params["segmenter"], 3)
    checkpoints.save(tmp_path / "artifacts/segmenter.pt", weak, to_config("segmenter", params["segmenter"], ["background", "cat", "dog"]))
    seen = []

    def fit(model, loader, cfg, device, batch_loss, desc, epoch_stats=None):   # records the first weights
        seen.extend([model.segmenter] if hasattr(model, "segmenter") else list(getattr(model, "members", [model])))
        if hasattr(model, "weak_head"):
            seen.append(("weak_head", model.weak_head))
        return [{"epoch": 1, "loss": 1.0, "seconds": 0.0}]
    monkeypatch.setattr(stage.trainer, "fit", fit)
    result = train_semi.main(params)

    assert result["semi_init"] == "weak_segmenter" and seen
    for item in seen:
        if isinstance(item, tuple):   # dual_branch: the weak head starts as the weak segmenter's head
            for k, v in item[1].state_dict().items():
                assert torch.equal(v, weak.head.state_dict()[k])
            continue
        for k, v in item.state_dict().items():
            assert torch.equal(v, weak.state_dict()[k]), k


def test_init_weak_segmenter_refuses_a_checkpoint_of_other_settings(tmp_path, voc_fixture, monkeypatch):
    from models.networks import to_config
    from models.segmenter import build_segmenter

    monkeypatch.setenv("WSSS_TRACKING", "off")
    params = workspace(tmp_path, voc_fixture, monkeypatch, ["semi.init=weak_segmenter"])
    other = {**params["segmenter"], "aspp_channels": 16}
    checkpoints.save(tmp_path / "artifacts/segmenter.pt", build_segmenter(other, 3), to_config("segmenter", other, ["background", "cat", "dog"]))
    with pytest.raises(ValueError, match=r"semi.init: weak_segmenter: artifacts/segmenter.pt does not fit"):
        train_semi.main(params)
