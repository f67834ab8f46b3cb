"""Seconds per training step of the classifier on CPU, against the naive layout, in one run.

    OMP_NUM_THREADS=2 python benchmarks/step_speed.py [--steps 6]

Batch 8 of 256 px crops, Lite0 at output stride 16, AdamW. The naive baseline is the layout torch
uses by default (contiguous NCHW, nothing frozen); the others add channels-last memory (what every
stage now uses) and frozen leading blocks. Medians of the steps after a warm-up step, and ratios
to the baseline, since a busy neighbour process changes absolute times. Writes
benchmarks/results/step_speed.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import host, write_lines

from models.backbones import freeze_prefix
from models.classifier import build_localizer
from training.runtime import place
from training.trainer import set_train_mode

CASES = [  # name, extra_convs, drs mode, frozen blocks, channels-last
    ("naive: NCHW, nothing frozen", 0, "none", 0, False),
    ("channels-last", 0, "none", 0, True),
    ("channels-last + stem/2 blocks frozen (classifier default)", 0, "none", 2, True),
    ("channels-last + stem/5 blocks frozen (refiner, segmenter)", 0, "none", 5, True),
    ("channels-last + 3 extra convs, frozen 2", 3, "none", 2, True),
    ("channels-last + 3 extra convs + learnable DRS, frozen 2", 3, "learnable", 2, True),
]


def step_seconds(extra: int, mode: str, frozen: int, channels_last: bool, steps: int) -> float:
    cfg = {"backbone": "efficientnet_lite0", "pretrained": True, "output_stride": 16, "extra_convs": extra,
           "extra_channels": 512, "extra_kernel": 3, "drs": {"mode": mode, "delta": 0.55, "placement": ["extra"]}}
    model = build_localizer(cfg, 20)
    freeze_prefix(model.backbone, frozen)
    set_train_mode(model, freeze_bn=True)
    x, y = torch.rand(8, 3, 256, 256) * 255, (torch.rand(8, 20) > 0.8).float()
    if channels_last:
        model, x = place(model, torch.device("cpu")), place(x, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.multilabel_soft_margin_loss(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    info = host()
    lines = [f"Classifier training step, batch 8 x 256 px, Lite0 OS16 ({info['date']}, {info['cpus']} CPUs, "
             f"threads {torch.get_num_threads()}); median of {args.steps} steps.", "",
             "| layout | s / step | vs naive |", "|---|---|---|"]
    base = None
    for name, *case in CASES:
        s = step_seconds(*case, args.steps)
        base = base or s
        lines.append(f"| {name} | {s:.3f} | {base / s:.2f}x |")
        print(lines[-1], flush=True)
    write_lines("step_speed.md", lines)


if __name__ == "__main__":
    main()
