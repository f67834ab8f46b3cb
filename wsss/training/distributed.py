"""Data-parallel training under torchrun: process group, per-rank data, DDP, rank 0's writes.

`torchrun --nproc_per_node N -m tasks STAGE` (or `distributed.nproc_per_node: N` in params.yaml,
which makes `python -m tasks` re-launch itself that way) runs one process per device; a training
stage's main is decorated with `stage`. Rules:
- params' `batch_size` is the global batch, split evenly over the ranks; the LR is unchanged, so
  a run on N devices takes the same steps as one process with the same sampler;
- every rank trains (`trainer.fit`); when training ends, every rank but 0 leaves the stage
  (`Follower`; `stage` returns {}) and rank 0 alone scores, saves and logs: the one guard for
  every write (MLflow: wsss/tracking/runs.py starts no run on ranks > 0);
- per-epoch losses are averaged over the ranks.
Without torchrun's environment none of this is active and training is exactly as before.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

from wsss.config.errors import StageError

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")   # what torchrun sets for every worker
# How long a collective waits: the other ranks wait while rank 0 alone labels before a round's
# training (torch's default, 10-30 min, is short for a large dataset)
TIMEOUT = datetime.timedelta(hours=3)


class Follower(SystemExit):
    """Raised on ranks > 0 once training ends: they leave the stage with exit code 0. A SystemExit,
    so no `except Exception` on the way can swallow it."""

    def __init__(self):
        super().__init__(0)


class BatchSplitError(StageError):
    kind = "params error"


def launched() -> bool:
    """Whether this process is a torchrun worker."""
    return all(k in os.environ for k in _ENV)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_device(device: torch.device) -> torch.device:
    """Each torchrun worker on a CUDA machine takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and launched() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextlib.contextmanager
def process_group():
    """The process group for one stage run under torchrun (no-op otherwise); yields this rank.
    Ranks > 0 that leave after training (Follower) end here quietly."""
    if not launched() or active():
        yield rank()
        return
    # gloo for CPU tensors, NCCL for CUDA ones: a stage's `device: cpu` still works on a GPU box
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield rank()
    except Follower:
        pass
    finally:
        dist.destroy_process_group()


def relaunch(params: dict, args: list[str]) -> int | None:
    """With distributed.nproc_per_node > 1 outside torchrun: `python -m tasks ARGS` again under
    torchrun with that many processes on this machine, and its exit code; else None (run here).
    --standalone: a rendezvous on a free localhost port."""
    nproc = params["distributed"]["nproc_per_node"]
    if nproc == 1 or launched():
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks", *args]
    print(f"distributed.nproc_per_node={nproc}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


def stage(main):
    """A training stage's main: run in the torchrun process group (if any); ranks > 0 return {}
    once training ends. `python -m tasks` finds `main.relaunch` and hands over to torchrun."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        with process_group():
            return main(*args, **kwargs)
        return {}   # a rank > 0 after training (Follower)
    run.relaunch = relaunch
    return run


def on_main(fn, *args, **kwargs):
    """fn(...) on rank 0 only (it writes), the others waiting for it; its result on rank 0, else None."""
    result = fn(*args, **kwargs) if rank() == 0 else None
    _barrier()
    return result


def sampler(dataset, seed: int):
    """A DistributedSampler (this rank's share of each epoch's seeded permutation) under torchrun,
    else None (the plain loader's own shuffle, unchanged)."""
    if not active():
        return None
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                               seed=seed)


def per_rank_batch(batch_size: int) -> int:
    """params' batch_size is the global batch: each rank takes an equal share."""
    n = world_size()
    if batch_size % n:
        raise BatchSplitError(f"batch_size {batch_size} does not split over {n} processes (it is the global batch: "
                              f"use a multiple of {n}, or set distributed.nproc_per_node to a divisor)")
    return batch_size // n


def rank_seed(seed: int) -> int:
    """A seed of (seed, rank): each rank's augmentation and loader workers draw their own stream."""
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0])


def start_epoch(loader, epoch: int) -> None:
    """A DistributedSampler reshuffles only when told the epoch (plain loaders reshuffle themselves)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def batch_metrics(loader) -> dict:
    """What a stage records of its batch: processes, the batch each one takes, the global batch."""
    return {"world_size": world_size(), "batch_per_rank": loader.batch_size,
            "global_batch": loader.batch_size * world_size()}


class _Step(torch.nn.Module):
    """batch_loss(model, batch) as a module, so DDP sees the forward pass whichever method of the
    model batch_loss calls (`model(x)`, `model.logits(x)`) and syncs the gradients it makes."""

    def __init__(self, model, batch_loss):
        super().__init__()
        self.model, self.batch_loss = model, batch_loss

    def forward(self, *batch):
        return self.batch_loss(self.model, list(batch))


def _sync_batchnorm(model, freeze_bn: bool) -> None:
    """BatchNorm layers that train use the statistics of the global batch (CUDA only: torch's
    SyncBatchNorm has no CPU kernel); with freeze_bn the backbone's stay frozen and unconverted."""
    for name, child in list(model.named_children()):
        if not (freeze_bn and child is model.backbone):
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


def step_fn(model, batch_loss, device: torch.device, freeze_bn: bool):
    """The trainer's forward: batch -> loss. Under torchrun, through DistributedDataParallel (its
    gradients are averaged over the ranks in backward); otherwise batch_loss(model, batch) as is."""
    if not active():
        return lambda batch: batch_loss(model, batch)
    if device.type == "cuda":
        _sync_batchnorm(model, freeze_bn)
    # static_graph: every step uses the same parameters, so ones a network never uses (a backbone's
    # unused head) are fine without find_unused_parameters' per-step graph walk
    ddp = torch.nn.parallel.DistributedDataParallel(
        _Step(model, batch_loss), device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
    return lambda batch: ddp(*batch)


def _barrier() -> None:
    """Wait for every rank: an all-reduce of a CPU tensor, which goes through gloo whether or not
    NCCL is there too (dist.barrier would have to pick a device)."""
    if active():
        dist.all_reduce(torch.zeros(1))


def mean(value: float) -> float:
    """The mean of a per-rank figure over the ranks (equal step counts: the global mean)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)   # CPU tensor: gloo also on a CUDA box ("cpu:gloo,cuda:nccl")
    return float(t.item()) / world_size()


def leave_unless_main() -> None:
    """After training: ranks > 0 wait until all ranks are done, then leave; rank 0 goes on alone."""
    _barrier()
    if rank() != 0:
        raise Follower()
