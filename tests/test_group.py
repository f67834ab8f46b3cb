"""Group-wise semantic mining (classifier.group): messages pass between the members of a group,
graph dropout removes exactly the most co-attended responses (in training only), the sampler's
groups share a tag, and the group classifier trains, round-trips through its checkpoint and
exports maps alone or with its neighbours."""
import json

import numpy as np
import pytest
import torch

from wsss.config.params import ParamsError, load
from wsss.dataset.groups import GroupBatchSampler
from wsss.localization import group as group_export
from wsss.localization.group import GroupLoss
from models.classifier import CAMClassifier, build_localizer
from models.group import GroupClassifier, GroupGraph, graph_dropout
from models.networks import from_config, to_config
from wsss.stores import mapstore
from tests.conftest import REPO

TINY = ["classifier.pretrained=true", "classifier.extra_convs=1", "classifier.extra_channels=16",
        "classifier.group.enabled=true", "classifier.group.channels=8", "classifier.group.size=2",
        "classifier.batch_size=4", "classifier.epochs=1", "classifier.crop_size=48", "classifier.resize_long=[48, 56]",
        "classifier.context_paste.prob=0"]


def tiny_cfg(*extra) -> dict:
    return load(REPO / "params.yaml", TINY + list(extra))["classifier"]


# ---- message passing -------------------------------------------------------------------------------

def test_graph_messages_reach_the_other_members_and_not_with_steps_0():
    torch.manual_seed(0)
    nodes = [torch.randn(2, 6, 3, 4) for _ in range(3)]
    changed = [nodes[0], nodes[1], nodes[2] + torch.randn(2, 6, 3, 4)]
    graph = GroupGraph(6, 5, steps=2).eval()
    before, _ = graph(nodes)
    after, _ = graph(changed)
    assert not torch.allclose(before[0], after[0], atol=1e-4)   # node 2's input reached node 0
    assert not torch.allclose(before[1], after[1], atol=1e-4)
    still = GroupGraph(6, 5, steps=0).eval()
    (a, *_), received = still(nodes)
    (b, *_), _ = still(changed)
    assert torch.equal(a, b) and received is None


def test_group_classifier_output_depends_on_its_group_only():
    torch.manual_seed(0)
    model = build_localizer(tiny_cfg(), 3).eval()
    assert isinstance(model, GroupClassifier)
    x = torch.rand(4, 3, 48, 48) * 255
    y = x.clone()
    y[1] = torch.rand(3, 48, 48) * 255            # member 1 of group 0 changes
    with torch.no_grad():
        (la, ma), (lb, mb) = model(x, group_size=2), model(y, group_size=2)
        alone_a, alone_b = model(x)[0], model(y)[0]
    assert not torch.allclose(ma[0], mb[0], atol=1e-5)   # its group-mate's maps changed
    assert torch.allclose(la[2:], lb[2:], atol=1e-6)      # the other group did not
    assert torch.allclose(alone_a[0], alone_b[0], atol=1e-6)   # alone (group of one): no messages from image 1
    steps0 = build_localizer(tiny_cfg("classifier.group.steps=0"), 3).eval()
    with torch.no_grad():
        assert torch.allclose(steps0(x, group_size=2)[1][0], steps0(y, group_size=2)[1][0], atol=1e-6)


# ---- graph dropout ---------------------------------------------------------------------------------

def test_graph_dropout_zeroes_exactly_the_top_received_positions():
    x = torch.arange(1, 2 * 2 * 2 * 3 + 1, dtype=torch.float32).view(2, 2, 2, 3)   # 2 nodes, 2 channels, 6 positions
    received = torch.tensor([[0.10, 0.50, 0.05, 0.20, 0.10, 0.05],
                             [0.30, 0.01, 0.02, 0.03, 0.04, 0.60]])
    out = graph_dropout(x, received, 0.34)   # int(0.34 * 6) = 2 positions per node
    zero = (out == 0).all(dim=1).flatten(1)
    assert zero[0].nonzero().flatten().tolist() == [1, 3]
    assert zero[1].nonzero().flatten().tolist() == [0, 5]
    kept = ~zero[:, None].expand(-1, 2, -1).reshape_as(x)
    assert torch.equal(out[kept], x[kept])
    assert torch.equal(graph_dropout(x, received, 0.1), x)   # int(0.6) = 0: nothing


def _captured(model, images, group_size):
    seen = {}
    model.graph.register_forward_hook(lambda m, i, o: seen.__setitem__("received", o[1]))
    model.classifier.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
    model(images, group_size=group_size)
    return seen


def test_graph_dropout_in_the_classifier_follows_co_attention_and_is_off_in_eval():
    torch.manual_seed(0)
    model = build_localizer(tiny_cfg("classifier.group.dropout=0.25"), 3)
    x = torch.rand(4, 3, 48, 48) * 255
    model.train()
    model.backbone.eval()   # batch norm on its running statistics: features per image as in eval
    seen = _captured(model, x, 2)
    received = torch.stack(seen["received"], 1).flatten(0, 1)   # per image, h*w
    zeroed = (seen["x"] == 0).all(dim=1).flatten(1)
    k = int(0.25 * received.shape[1])
    for i in range(4):
        assert set(zeroed[i].nonzero().flatten().tolist()) == set(received[i].topk(k).indices.tolist())
    model.eval()
    seen = _captured(model, x, 2)
    assert not (seen["x"] == 0).all(dim=1).any()


# ---- the sampler -----------------------------------------------------------------------------------

TAGS = [[1], [1, 2], [2], [3], [3, 1], [4], [2], [1], [5, 1], [2, 3], [6], [1]]   # 4 and 6: nobody else's


def test_sampler_groups_share_a_tag_and_lonely_images_go_with_copies_of_themselves():
    sampler = GroupBatchSampler(TAGS, size=3, groups=2, seed=0)
    assert sampler.alone == [5, 10] and len(sampler) == len(TAGS) // 6
    for epoch in range(5):
        groups = sampler.epoch_groups(epoch)
        assert {i for g in groups for i in g} == set(range(len(TAGS)))   # every image, every epoch
        for g in groups:
            assert len(g) == 3 and set.intersection(*(set(TAGS[i]) for i in g)), g
            if g[0] in (5, 10):
                assert g == [g[0]] * 3
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == 6 for b in batches)
    assert list(sampler) != batches   # the next pass is the next epoch's groups
    halves = [list(GroupBatchSampler(TAGS, 3, 2, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == batches   # two ranks: one group each of the same global batch


def test_params_check_group_batches():
    with pytest.raises(ParamsError, match="classifier.batch_size: 6 is not a whole number of groups"):
        load(REPO / "params.yaml", ["classifier.group.enabled=true", "classifier.batch_size=6"])
    with pytest.raises(ParamsError, match="maps.group_export"):
        load(REPO / "params.yaml", ["classifier.group.enabled=true", "maps.group_export=neighbours", "maps.method=prm"])


def test_nearest_neighbours_share_a_tag_and_rank_by_overlap_and_cosine():
    tags = [[1], [1], [1, 2], [2], [3]]
    desc = np.eye(5, dtype=np.float32)
    desc[1] = desc[0]                                   # image 1 looks like image 0
    desc[3] = (desc[2] + desc[3]) / np.sqrt(2)          # image 3 somewhat like image 2
    assert group_export.nearest(tags, desc, 2) == [[1, 2], [0, 2], [3, 0], [2], []]


# ---- training, checkpoint, export ------------------------------------------------------------------

def test_a_group_training_step_with_pasting_and_the_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg("classifier.context_paste.prob=0.5", "classifier.context_paste.start_epoch=0")
    model = build_localizer(cfg, 3)
    from wsss.localization.context_paste import ContextPaste
    loss_fn = GroupLoss(cfg["group"], ContextPaste(cfg["context_paste"], 1, 0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [torch.rand(4, 3, 48, 48) * 255, torch.tensor([[1., 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])]
    for _ in range(2):   # step 1 fills the paste bank, step 2 pastes
        loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert model.graph.update.gates.weight.grad.abs().sum() > 0   # the graph is trained
        opt.step()
    from wsss.training import checkpoints
    checkpoints.save(tmp_path / "c.pt", model, to_config("localizer", cfg, ["background", "a", "b", "c"]))
    back, config = checkpoints.load(tmp_path / "c.pt", torch.device("cpu"))
    assert isinstance(back, GroupClassifier) and back.group_size == 2
    assert isinstance(from_config(to_config("localizer", {**cfg, "group": {**cfg["group"], "enabled": False}},
                                            ["background", "a", "b", "c"])), CAMClassifier)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(back(batch[0], group_size=2)[1], model(batch[0], group_size=2)[1], atol=1e-5)


@pytest.fixture
def trained(voc_fixture, tmp_path, monkeypatch):
    """The manifest and a group classifier trained one epoch on the tiny VOC fixture."""
    from tasks import manifest, train_classifier
    monkeypatch.setenv("WSSS_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    params = load(REPO / "params.yaml", TINY + [f"data.root={voc_fixture}", "maps.scales=[1.0]", "maps.n_overlays=1"])
    manifest.main(params)
    metrics = train_classifier.main(params)
    return params, metrics


def test_the_stage_trains_in_groups_and_exports_alone_and_with_neighbours(trained, tmp_path):
    from tasks import export_maps
    params, metrics = trained
    assert metrics["group_size"] == 2 and metrics["global_batch"] == 4 and "val_map" in metrics
    maps = {}
    for mode in ("single", "neighbours"):
        result = export_maps.main({**params, "maps": {**params["maps"], "group_export": mode}})
        assert result["group_export"] == mode and result["n_images"] == 4
        maps[mode] = {i: m for i, _, m in mapstore.read(tmp_path / "artifacts/maps")}
        assert all(m.shape[1:] == (40, 50) and m.max() > 0.99 for m in maps[mode].values())
    assert result["alone"] == 0 and result["neighbour_seconds"] >= 0
    assert json.loads((tmp_path / "metrics/maps.json").read_text())["group_export"] == "neighbours"
    # the neighbours joined each image's group: its maps differ from its maps alone
    assert any(not np.allclose(maps["single"][i], maps["neighbours"][i], atol=1e-3) for i in maps["single"])
