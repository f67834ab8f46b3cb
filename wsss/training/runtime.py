"""Device choice, precision, seeding, the data loader and the LR schedule: what every training stage shares."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, PolynomialLR

from wsss.config.errors import StageError
from wsss.training import distributed
from wsss.training.distributed import local_device


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present; under torchrun each worker takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (use device: auto or cpu)")
    return local_device(torch.device(name))


def wants_gpu(name: str) -> bool:
    """Whether a device setting runs on CUDA here, without failing where there is none: a
    scaled-out stage then asks its Dask scheduler for GPU workers (wsss/scaleout/engine.py)."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def place(x, device: torch.device):
    """A model or tensor on `device`; models and image batches (4-D) go channels-last, which makes
    the depthwise and dilated convolutions of the CPU path 1.1-1.4x faster (benchmarks/results/step_speed.jsonl)."""
    if isinstance(x, torch.nn.Module):
        return x.to(device, memory_format=torch.channels_last)
    x = x.to(device, non_blocking=True)   # overlaps the copy from pinned memory (CUDA); no-op on the CPU
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def native_bf16(device: torch.device) -> bool:
    """Whether the device has bfloat16 arithmetic units; without them (most laptop CPUs) bf16 is
    emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)   # emulated bf16 (V100) is slow
    # torch exposes the CPU's features only privately; a torch without these reads as "no"
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class PrecisionError(StageError):
    kind = "params error"


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto`: bf16 where the device computes it natively; on a GPU without it (V100, T4) fp16,
    which trains with loss scaling (grad_scaler); else fp32."""
    if precision == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError(f"precision fp16 needs a CUDA device, not {device}: use auto, fp32 or bf16")
    return precision


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The context a stage runs its network in: `bf16` / `fp16` run convolutions in that type
    (losses, softmax and upsampling stay float32); CPUs with AMX run bf16 1.2-1.5x faster
    (benchmarks/results/precision_speed.jsonl); `fp32` changes nothing; `auto` picks (resolve_precision)."""
    dtype = _DTYPES.get(resolve_precision(device, precision))
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (its small range underflows gradients); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(device, precision) == "fp16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _reseed_worker(worker_id: int) -> None:
    """Each loader worker gets its own augmentation stream (a copied numpy RNG would repeat)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)


def training_loader(dataset, cfg: dict) -> torch.utils.data.DataLoader:
    """Shuffled, seeded batches of a training stage's dataset (section cfg of params.yaml); pinned
    memory when it trains on CUDA. Under torchrun, this rank's share of each global batch
    (wsss/training/distributed.py), with augmentation and worker streams seeded per rank."""
    pin = resolve_device(cfg.get("device", "cpu")).type == "cuda"
    sampler = distributed.sampler(dataset, cfg["seed"])
    if sampler is None:   # one process: exactly the loader it always was
        return torch.utils.data.DataLoader(
            dataset, batch_size=min(cfg["batch_size"], len(dataset)), shuffle=True, drop_last=True,
            num_workers=cfg["num_workers"], worker_init_fn=_reseed_worker, pin_memory=pin,
            generator=torch.Generator().manual_seed(cfg["seed"]),
        )
    seed = distributed.rank_seed(cfg["seed"])
    if hasattr(dataset, "rng"):   # num_workers 0: the ranks would otherwise crop and flip alike
        dataset.rng = np.random.default_rng(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=min(distributed.per_rank_batch(cfg["batch_size"]), len(sampler)), sampler=sampler,
        drop_last=True, num_workers=cfg["num_workers"], worker_init_fn=_reseed_worker, pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),   # the workers' base seed, per rank
    )


def lr_scheduler(opt: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int) -> LRScheduler:
    """The classifier's schedule, stepped after every batch: polynomial decay (power 0.9) over
    epochs x steps_per_epoch steps, the last one at base x (1 / total)^0.9, or x0.1 at each
    milestone epoch of lr_step_epochs."""
    if cfg["lr_schedule"] == "step":
        milestones = cfg["lr_step_epochs"]
        return LambdaLR(opt, lambda step: 0.1 ** sum(step // steps_per_epoch >= e for e in milestones))
    return PolynomialLR(opt, total_iters=max(cfg["epochs"] * steps_per_epoch, 1), power=0.9)
