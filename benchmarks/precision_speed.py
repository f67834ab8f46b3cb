"""bfloat16 autocast and a strided segmentation loss against float32 and the full-size loss, in one run.

    OMP_NUM_THREADS=2 python benchmarks/precision_speed.py [--rounds 8]

Three timings, each case against its baseline (the first row of its group):
- the segmenter's training step (batch 8 x 256 px, Lite0 OS16, aspp_plus, stem + 5 blocks frozen,
  AdamW) through the stage's own `segmentation_loss`, by `precision` and `loss_stride`;
- the classifier's training step (stem + 2 blocks frozen), by `precision`;
- one val image's inference as the segmenter evaluates it (500 x 375 px, scales 0.5/0.75/1 + flip),
  by `precision`.
Cases take turns, one call each per round, so a neighbour process slows all alike; medians over
the rounds after a warm-up. bfloat16 pays only where the CPU has bf16 matrix units (AMX, AVX512-BF16).
Writes benchmarks/results/precision_speed.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from common import REPO, host, write_lines

from models.backbones import freeze_prefix
from models.classifier import build_localizer
from models.segmenter import Segmenter
from config.params import load
from training.runtime import autocast, place
from training.segmentation import predict_probs, segmentation_loss
from training.trainer import set_train_mode

CPU = torch.device("cpu")


def segmenter_step(precision: str, loss_stride: int):
    model = Segmenter(21, head="aspp_plus", low_level_stride=8)
    freeze_prefix(model.backbone, 5)
    set_train_mode(model, freeze_bn=True)
    model = place(model, CPU)
    batch = [place(torch.rand(8, 3, 256, 256) * 255, CPU), torch.randint(0, 21, (8, 256, 256))]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    loss_fn = segmentation_loss({"loss": "cross_entropy", "loss_stride": loss_stride})

    def step() -> None:
        with autocast(CPU, precision):
            loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def classifier_step(precision: str):
    cfg = load(REPO / "params.yaml")["classifier"]
    model = build_localizer({**cfg, "pretrained": False}, 20)
    freeze_prefix(model.backbone, cfg["freeze_blocks"])
    set_train_mode(model, freeze_bn=True)
    model = place(model, CPU)
    x, y = place(torch.rand(8, 3, 256, 256) * 255, CPU), (torch.rand(8, 20) > 0.8).float()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

    def step() -> None:
        with autocast(CPU, precision):
            loss = torch.nn.functional.multilabel_soft_margin_loss(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def val_inference(precision: str):
    model = place(Segmenter(21, head="aspp_plus", low_level_stride=8, pretrained=False), CPU).eval()
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    return lambda: predict_probs(model, image, CPU, True, (0.5, 0.75, 1.0), precision)


GROUPS = {  # title: [(case, make)], the first case is the baseline
    "segmenter training step": [
        ("float32, loss on every pixel (before)", lambda: segmenter_step("fp32", 1)),
        ("float32, loss_stride 4", lambda: segmenter_step("fp32", 4)),
        ("bf16, loss on every pixel", lambda: segmenter_step("bf16", 1)),
        ("bf16, loss_stride 4 (default)", lambda: segmenter_step("bf16", 4)),
    ],
    "classifier training step": [
        ("float32 (default)", lambda: classifier_step("fp32")),
        ("bf16", lambda: classifier_step("bf16")),
    ],
    "val image, 3 scales + flip": [
        ("float32", lambda: val_inference("fp32")),
        ("bf16 (default)", lambda: val_inference("bf16")),
    ],
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    cases = [(group, name, make()) for group, items in GROUPS.items() for name, make in items]
    times = [[] for _ in cases]
    for _ in range(args.rounds + 1):
        for i, (*_, fn) in enumerate(cases):
            times[i].append(timed(fn))
    info = host()
    lines = [f"bfloat16 autocast and the strided loss ({info['date']}, {info['cpus']} CPUs, threads "
             f"{torch.get_num_threads()}); median of {args.rounds} interleaved rounds.", "",
             "| what | case | s | speed-up |", "|---|---|---|---|"]
    base = {}
    for (group, name, _), t in zip(cases, times):
        s = statistics.median(t[1:])
        base.setdefault(group, s)
        lines.append(f"| {group} | {name} | {s:.3f} | {base[group] / s:.2f}x |")
        print(lines[-1], flush=True)
    write_lines("precision_speed.md", lines)


if __name__ == "__main__":
    main()
