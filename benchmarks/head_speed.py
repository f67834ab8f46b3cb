"""Seconds per training step of the segmenter by head, against the plain ASPP head, in one run.

    OMP_NUM_THREADS=2 python benchmarks/head_speed.py [--rounds 5]

Batch 8 of 256 px crops, Lite0 at output stride 16, stem + 5 blocks frozen, channels-last, AdamW,
cross-entropy over 21 classes: the segmenter's default training step. The heads take turns, one
step each per round, so a neighbour process slows all of them alike; medians over the rounds after
a warm-up, and ratios to `aspp`. Writes benchmarks/results/head_speed.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import host, write_lines

from models.backbones import freeze_prefix
from models.segmenter import Segmenter
from training.runtime import place
from training.trainer import set_train_mode

CASES = [  # name, head, low_level_stride
    ("aspp (DeepLabV3; the baseline)", "aspp", 8),
    ("aspp_plus, low level at stride 8 (default)", "aspp_plus", 8),
    ("aspp_plus, low level at stride 4", "aspp_plus", 4),
]


def trainer_step(head: str, low_stride: int):
    model = Segmenter(21, head=head, low_level_stride=low_stride)
    freeze_prefix(model.backbone, 5)
    set_train_mode(model, freeze_bn=True)
    cpu = torch.device("cpu")
    model = place(model, cpu)
    x, y = place(torch.rand(8, 3, 256, 256) * 255, cpu), torch.randint(0, 21, (8, 256, 256))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

    def step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    steps = [trainer_step(head, stride) for _, head, stride in CASES]
    times = [[] for _ in CASES]
    for _ in range(args.rounds + 1):
        for i, step in enumerate(steps):
            times[i].append(step())
    medians = [statistics.median(t[1:]) for t in times]
    info = host()
    lines = [f"Segmenter training step, batch 8 x 256 px, Lite0 OS16, stem + 5 blocks frozen ({info['date']}, "
             f"{info['cpus']} CPUs, threads {torch.get_num_threads()}); median of {args.rounds} interleaved rounds.",
             "", "| head | s / step | vs aspp |", "|---|---|---|"]
    for (name, *_), s in zip(CASES, medians):
        lines.append(f"| {name} | {s:.3f} | {s / medians[0]:.2f}x |")
        print(lines[-1], flush=True)
    write_lines("head_speed.md", lines)


if __name__ == "__main__":
    main()
