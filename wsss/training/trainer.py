"""The training loop every learned stage shares: optimiser groups, LR schedule, progress, history.

A stage supplies the model (with `new_modules()` and `backbone`) and `batch_loss(model, batch)`;
the loop is the same for the classifier, the refiner and the segmenter, in one process or under
torchrun (wsss/training/distributed.py: DDP, losses averaged over ranks, ranks > 0 leave at the end).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.config.errors import StageError
from models.backbones import freeze_prefix
from wsss.tracking import runs as tracking
from wsss.training import distributed
from wsss.training.runtime import autocast, grad_scaler, lr_scheduler, place


class NonFiniteLoss(StageError, RuntimeError):
    """A training step's loss is NaN or infinite: fit stops before the optimiser applies it."""

    kind = "training stopped"


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:  # small batches: keep the pretrained BatchNorm statistics
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """Pretrained parameters at lr, layers trained from scratch at lr * new_layer_lr_mult."""
    new = {id(p) for m in model.new_modules() for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in new], "lr": cfg["lr"]},
        {"params": [p for p in params if id(p) in new], "lr": cfg["lr"] * cfg["new_layer_lr_mult"]},
    ]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])


class WeightAverage:
    """An exponential moving average of the floating-point weights and buffers (Polyak averaging),
    taken after every optimiser step. The effective decay ramps up as min(decay, (1 + n) / (10 + n))
    at the n-th update so the untrained starting weights wash out within the first steps even on
    short schedules. Integer buffers (BatchNorm's step count) are never copied back."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.average = AveragedModel(model, multi_avg_fn=self._ramped, use_buffers=True)
        # the first update copies: counting it here makes the n-th training step's update the n-th average
        self.average.update_parameters(model)

    def _ramped(self, averaged: list, current: list, n: torch.Tensor) -> None:
        n = int(n)
        get_ema_multi_avg_fn(min(self.decay, (1 + n) / (10 + n)))(averaged, current, n)

    def update(self) -> None:
        self.average.update_parameters(self.model)

    def copy_to(self, model: torch.nn.Module) -> None:
        state = self.average.module.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if v.is_floating_point()}, strict=False)


def fit(model, loader: DataLoader, cfg: dict, device: torch.device,
        batch_loss: Callable, desc: str, epoch_stats: Callable | None = None) -> list[dict]:
    """Train for cfg['epochs']; returns one dict per epoch (loss, seconds, plus epoch_stats()).

    cfg['ema_decay'] > 0: the model ends with the moving average of its weights (WeightAverage).
    A NaN or infinite loss raises NonFiniteLoss before that step changes any weight; stages save
    after fit returns, so nothing is written. Under torchrun only rank 0 returns (the others raise
    distributed.Follower), so what a stage does after fit runs once.
    """
    freeze_prefix(model.backbone, cfg["freeze_blocks"])
    opt = make_optimizer(model, cfg)
    schedule = lr_scheduler(opt, cfg, len(loader))
    total, step, history = cfg["epochs"] * len(loader), 0, []
    place(model, device)
    forward = distributed.step_fn(model, batch_loss, device, cfg["freeze_bn"])
    scaler = grad_scaler(device, cfg["precision"])
    average = WeightAverage(model, cfg["ema_decay"]) if cfg.get("ema_decay", 0.0) > 0 else None
    bar = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, disable=distributed.rank() != 0)
    try:
        for epoch in range(cfg["epochs"]):
            set_train_mode(model, cfg["freeze_bn"])
            losses, start = [], time.perf_counter()
            distributed.start_epoch(loader, epoch)
            for batch_index, batch in enumerate(loader):
                with autocast(device, cfg["precision"]):
                    loss = forward([place(t, device) for t in batch])
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"{desc}: loss is {value} at epoch {epoch + 1}/{cfg['epochs']}, step {batch_index + 1}/"
                        f"{len(loader)} (step {step + 1} of {total}); stopped before it changed the weights "
                        "(a lower learning rate may help)")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()   # fp16 only: scaled; otherwise loss.backward(), opt.step()
                scaler.step(opt)
                scaler.update()
                schedule.step()
                if average:
                    average.update()
                losses.append(value)
                step += 1
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.4f}")
            loss_mean = distributed.mean(float(np.mean(losses)))   # over the ranks under torchrun
            record = {"epoch": epoch + 1, "loss": loss_mean, "seconds": time.perf_counter() - start,
                      **(epoch_stats() if epoch_stats else {})}
            history.append(record)
            tracking.log_metrics({k: v for k, v in record.items() if v is not None and k != "epoch"}, step=epoch + 1)
    finally:
        bar.close()
    distributed.leave_unless_main()
    if average:
        average.copy_to(model)
    return history


def history_csv(history: list[dict]) -> str:
    return "epoch,loss,seconds\n" + "".join(f"{h['epoch']},{h['loss']:.6f},{h['seconds']:.2f}\n" for h in history)
