"""Data-parallel training (wsss/training/distributed.py) on the CPU: gloo, 2 processes spawned with
torchrun's environment on 127.0.0.1, against 1 process with the same sampler and global batch."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from wsss.training import distributed, runtime
from wsss.training.checkpoints import save
from wsss.training.runtime import training_loader
from wsss.training.trainer import fit
from wsss.stores.atomic import write_text
from wsss.tracking.outputs import write_stage_outputs
from tests.toys import Backbone, Noise

N, BATCH, EPOCHS = 24, 4, 2
CFG = {"freeze_blocks": 0, "freeze_bn": True, "epochs": EPOCHS, "optimizer": "sgd", "lr_schedule": "poly",
       "lr_step_epochs": [1], "lr": 0.05, "new_layer_lr_mult": 1.0, "weight_decay": 0.0, "momentum": 0.9,
       "precision": "fp32", "batch_size": BATCH, "num_workers": 0, "seed": 0, "device": "cpu"}
LOSS_RTOL = 1e-5   # float32 sums in another order (gradients all-reduced): far below any real change


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)
        self.unused = torch.nn.Linear(8, 1)   # trainable but never called: DDP must cope (static_graph)

    def new_modules(self):
        return [self.head, self.unused]

    def forward(self, x):
        return self.head(self.backbone(x))


class Indexed(Dataset):
    """Fixed samples that carry their index, so each step's batch can be read back."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(N, 3, generator=g), torch.randn(N, 1, generator=g)
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return self.x[i], self.y[i], torch.tensor(i)


def _toy_stage(seen: list) -> dict:
    """A training stage in miniature: fit, then a checkpoint and metrics (rank 0 only)."""
    torch.manual_seed(0)
    # what must exist before training (a label round's labels): rank 0 writes it, the others wait
    distributed.on_main(write_text, "labels\n", "artifacts/labels.txt")
    model = Toy()
    loader = training_loader(Indexed(), CFG)

    def batch_loss(model, batch):
        x, y, index = batch
        seen.append(index.tolist())
        return torch.nn.functional.mse_loss(model(x), y)

    history = fit(model, loader, CFG, torch.device("cpu"), batch_loss, "toy")
    save("artifacts/toy.pt", model, {"kind": "toy"})
    write_stage_outputs("toy", {"losses": [h["loss"] for h in history], **distributed.batch_metrics(loader)})
    return {"losses": [h["loss"] for h in history],
            "weights": {k: v.tolist() for k, v in model.state_dict().items() if v.is_floating_point()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), WSSS_TRACKING="off")
    torch.set_num_threads(1)
    work = os.path.join(out, f"work{rank}")   # each rank its own folder: rank 1's must stay empty
    os.makedirs(work)
    os.chdir(work)
    seen: list = []
    result = distributed.stage(_toy_stage)(seen)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"seen": seen, "result": result}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, world: int) -> list[dict]:
    out = tmp_path / f"world{world}"
    out.mkdir()
    mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, _run(tmp, 1), _run(tmp, 2)


def test_ddp_two_ranks_split_each_global_batch_of_the_one_process_run(runs):
    _, (one,), (r0, r1) = runs
    steps = EPOCHS * N // BATCH
    assert len(one["seen"]) == len(r0["seen"]) == len(r1["seen"]) == steps
    for s in range(steps):
        assert len(r0["seen"][s]) == len(r1["seen"][s]) == BATCH // 2   # the global batch, split
        assert not set(r0["seen"][s]) & set(r1["seen"][s])
        assert sorted(r0["seen"][s] + r1["seen"][s]) == sorted(one["seen"][s]), f"step {s}"
    per_epoch = [sum(one["seen"][e * steps // EPOCHS:(e + 1) * steps // EPOCHS], []) for e in range(EPOCHS)]
    assert all(sorted(p) == list(range(N)) for p in per_epoch)   # every sample once an epoch
    assert per_epoch[0] != per_epoch[1]   # set_epoch: each epoch its own order


def test_ddp_losses_and_weights_match_one_process(runs):
    _, (one,), (r0, _) = runs
    np.testing.assert_allclose(r0["result"]["losses"], one["result"]["losses"], rtol=LOSS_RTOL)
    assert one["result"]["losses"][1] < one["result"]["losses"][0]   # it trains: the comparison means something
    for key, value in one["result"]["weights"].items():
        np.testing.assert_allclose(r0["result"]["weights"][key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_ddp_rank_zero_alone_writes_one_checkpoint_and_the_metrics(runs):
    tmp, _, (r0, r1) = runs
    work0, work1 = tmp / "world2/work0", tmp / "world2/work1"
    assert sorted(str(p.relative_to(work0)) for p in work0.rglob("*") if p.is_file()) == [
        "artifacts/labels.txt", "artifacts/toy.pt", "metrics/toy.json"]
    assert list(work1.rglob("*")) == []   # rank 1 trained and left: nothing written
    assert r1["result"] == {} and len(r1["seen"]) > 0
    metrics = json.loads((work0 / "metrics/toy.json").read_text())
    assert (metrics["world_size"], metrics["batch_per_rank"], metrics["global_batch"]) == (2, BATCH // 2, BATCH)
    assert metrics["losses"] == r0["result"]["losses"]   # rank 0 records the loss averaged over the ranks


def test_distributed_off_keeps_the_plain_loader():
    """Without torchrun the loader is the one training always used: same batches, same order."""
    cfg = dict(CFG)
    plain = torch.utils.data.DataLoader(Indexed(), batch_size=BATCH, shuffle=True, drop_last=True,
                                        generator=torch.Generator().manual_seed(cfg["seed"]))
    ours = training_loader(Indexed(), cfg)
    assert ours.sampler.__class__.__name__ == "RandomSampler" and not ours.pin_memory
    for _ in range(2):
        assert [b[2].tolist() for b in ours] == [b[2].tolist() for b in plain]
    assert distributed.batch_metrics(ours) == {"world_size": 1, "batch_per_rank": BATCH, "global_batch": BATCH}


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_distributed_batch_must_split_over_the_ranks(monkeypatch):
    _as_rank(monkeypatch, 0, 3)
    with pytest.raises(distributed.BatchSplitError, match="batch_size 4 does not split over 3 processes"):
        training_loader(Indexed(), CFG)



@pytest.mark.parametrize("workers", [0, 2])
def test_ddp_ranks_and_workers_draw_their_own_augmentation(monkeypatch, workers):
    values = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        values += [float(v) for v in training_loader(Noise(), {**CFG, "batch_size": 2, "num_workers": workers})]
    assert len(values) == 8 and len(set(values)) == len(values)   # no rank or worker replays another's stream


def test_distributed_pin_memory_only_when_training_on_cuda(monkeypatch):
    assert not training_loader(Indexed(), CFG).pin_memory
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    assert training_loader(Indexed(), {**CFG, "device": "cuda"}).pin_memory


def test_distributed_precision_on_the_gpu_path(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert runtime.resolve_precision(cuda, "auto") == "fp16"   # a GPU without bf16 (V100, T4): fp16 + GradScaler
    assert runtime.resolve_precision(cpu, "auto") == "fp32"
    with pytest.raises(runtime.PrecisionError, match="fp16 needs a CUDA device"):
        runtime.resolve_precision(cpu, "fp16")
    assert not runtime.grad_scaler(cpu, "fp32").is_enabled()
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert runtime.resolve_precision(cuda, "auto") == "bf16"   # bf16 needs no loss scaling


def test_distributed_relaunch_under_torchrun(monkeypatch):
    """nproc_per_node > 1: `python -m tasks` hands a training stage to torchrun, and only then."""
    import subprocess

    import tasks.__main__ as cli

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(cli, "run_stage", lambda name, params: {"ran": name})
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert cli.main(["train_refiner", "--set", "distributed.nproc_per_node=2"]) == 0
    assert calls and calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                      "-m", "tasks", "train_refiner", "--set", "distributed.nproc_per_node=2"]
    calls.clear()
    assert cli.main(["summarize", "--set", "distributed.nproc_per_node=2"]) == 0   # not a training stage
    assert cli.main(["train_refiner"]) == 0                                        # one process: runs here
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1"), monkeypatch.setenv("MASTER_PORT", "1")
    assert cli.main(["train_refiner", "--set", "distributed.nproc_per_node=2"]) == 0   # already a worker
    assert calls == []


SMALL = ["pretrained=false", "epochs=2", "batch_size=4", "crop_size=32", "resize_long=[40,56]", "device=cpu",
         "freeze_bn=false"]   # BN trains: DDP must still agree (no SyncBatchNorm on the CPU)


def test_ddp_stages_through_the_cli_with_real_networks(voc_fixture, tmp_path, monkeypatch):
    """`python -m tasks STAGE` with distributed.nproc_per_node=2 re-launches under torchrun: the real
    classifier and segmenter train two steps under DDP (a parameter without a gradient fails the second),
    rank 0 alone writes, and the command exits 0."""
    import subprocess
    import sys

    from tasks import manifest
    from tests.conftest import REPO

    env = {**os.environ, "WSSS_TRACKING": "off", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    common = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={voc_fixture}",
              "--set", "distributed.nproc_per_node=2"]

    def run(stage, *sets):
        cmd = [sys.executable, "-m", "tasks", stage, *common, *[a for s in sets for a in ("--set", s)]]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    monkeypatch.chdir(tmp_path)   # the manifest in this process: one interpreter start fewer
    manifest.main({"data": {"root": str(voc_fixture), "train_split": "train", "val_split": "val"}})
    done = run("train_classifier", *[f"classifier.{s}" for s in SMALL], "classifier.context_paste.prob=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in done.stderr
    metrics = json.loads((tmp_path / "metrics/classifier.json").read_text())
    assert (metrics["world_size"], metrics["batch_per_rank"], metrics["global_batch"]) == (2, 2, 4)
    assert "val_map" in metrics   # rank 0 scored after training, the other rank had left
    done = run("train_reference", *[f"segmenter.{s}" for s in SMALL], "segmenter.aspp_channels=8",
               "segmenter.val_scales=[1.0]", "segmenter.val_flip=false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics/reference.json").read_text())["global_batch"] == 4
    assert done.stdout.count('"enabled": true') == 1   # one result line: rank 0's
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["classifier.pt", "manifest.parquet",
                                                                          "reference.pt"]


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_distributed_sync_batchnorm_only_where_batchnorm_trains(freeze_bn):
    """On CUDA (not testable here beyond the conversion) the BN layers that train sync over the ranks."""
    model = Toy()
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    weight = model.head[0].weight
    distributed._sync_batchnorm(model, freeze_bn)
    assert type(model.head[0]) is torch.nn.SyncBatchNorm and model.head[0].weight is weight   # same parameters
    assert (type(model.backbone[1]) is torch.nn.BatchNorm1d) == freeze_bn
