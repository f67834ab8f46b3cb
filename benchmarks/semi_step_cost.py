"""Seconds per training step of each train_semi method against the plain segmenter step, and the
cyclegan generator's size: what the few-masks runs will cost before running them.

    OMP_NUM_THREADS=2 python benchmarks/semi_step_cost.py [--steps 3] [--set key=value ...]

Random batches of the segmenter section's shape (batch_size x crop_size, half masked), the real
optimiser, freezing and precision of trainer.fit; the first step of each method is a warm-up.
Writes benchmarks/results/semi_step_cost.json (--out: another file).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, host, params_for   # noqa: F401  (common puts the repository on sys.path)
from models.backbones import freeze_prefix
from models.segmenter import build_segmenter
from wsss.semi import cotraining, cutmix, cycle
from wsss.semi.losses import Parts, supervised_batch_loss
from wsss.training.runtime import autocast, place, resolve_device, resolve_precision
from wsss.training.segmentation import segmentation_loss
from wsss.training.trainer import make_optimizer, set_train_mode


def build(method: str, params: dict, n_classes: int, parts: Parts):
    cfg, semi = params["segmenter"], params["semi"]
    n_masked = cfg["batch_size"] // 2
    if method == "train_segmenter":
        model = build_segmenter(cfg, n_classes)
        loss = segmentation_loss(cfg)
        return model, lambda m, b: loss(m, b[:2])
    if method in ("masks_only", "masks+pseudo"):
        return build_segmenter(cfg, n_classes), supervised_batch_loss(cfg, n_masked, semi["pseudo_weight"], parts)
    if method == "cotraining":
        model = cotraining.build_members(cfg, n_classes, semi["cotraining"]["members"])
        return model, cotraining.batch_loss_fn(cfg, semi, n_masked, 1000, 1000, parts)[0]
    if method == "cutmix":
        model = cutmix.MeanTeacher(build_segmenter(cfg, n_classes), semi["cutmix"]["teacher_decay"])
        return model, cutmix.batch_loss_fn(cfg, semi, n_masked, 1000, parts)
    gan = semi["cyclegan"]
    model = cycle.CycleModel(build_segmenter(cfg, n_classes), n_classes, gan["size"], gan["generator_width"],
                             gan["discriminator_width"])
    return model, cycle.batch_loss_fn(cfg, semi, n_masked, 1000, parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=["train_segmenter", "masks+pseudo", "cotraining", "cyclegan",
                                                      "cutmix"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default=str(RESULTS / "semi_step_cost.json"))
    args = ap.parse_args()
    params = params_for("data/demo", ["segmenter.device=cpu", *args.set])
    cfg, n_classes = params["segmenter"], 21
    device = resolve_device(cfg["device"])
    b, s = cfg["batch_size"], cfg["crop_size"]
    torch.manual_seed(0)
    x = torch.rand(b, 3, s, s) * 255
    labels = torch.randint(0, n_classes, (b, s // 32, s // 32)).repeat_interleave(32, 1).repeat_interleave(32, 2)
    batch = [place(t, device) for t in (x, labels, torch.arange(b))]
    out = {"settings": {"batch_size": b, "crop_size": s, "backbone": cfg["backbone"], "head": cfg["head"],
                        "precision": resolve_precision(device, cfg["precision"]), "members": params["semi"]["cotraining"]["members"],
                        "cyclegan": params["semi"]["cyclegan"], "cutmix": params["semi"]["cutmix"]},
           "seconds_per_step": {}, **host()}
    for method in args.methods:
        parts = Parts()
        model, loss_fn = build(method, params, n_classes, parts)
        freeze_prefix(model.backbone, cfg["freeze_blocks"])
        opt = make_optimizer(model, cfg)
        place(model, device)
        set_train_mode(model, cfg["freeze_bn"])
        times = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            with autocast(device, cfg["precision"]):
                loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        out["seconds_per_step"][method] = round(sum(times[1:]) / args.steps, 2)
        if method == "cyclegan":
            out.update(model.parameter_counts())
        print(method, out["seconds_per_step"][method], flush=True)
    base = out["seconds_per_step"].get("train_segmenter")
    if base:
        out["relative"] = {m: round(v / base, 2) for m, v in out["seconds_per_step"].items()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
