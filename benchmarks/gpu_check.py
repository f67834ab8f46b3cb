"""GPU readiness check: the whole pipeline on one GPU, timed per stage, then the training stages
again under torchrun (one process by default), each compared with its single-process run.

    python benchmarks/gpu_check.py --root $WSSS_VOC_MINI [--nproc 1] [--set key=value ...]

Writes benchmarks/results/gpu_check.json (the pipeline: every stage's score and seconds, the GPU,
torch, CUDA, the precision each stage resolved) and gpu_check_torchrun.json (per training stage:
exit code, seconds, world size, batches, final loss and score beside the one-process run's).
Without a CUDA GPU it stops at once with exit code 3. Nothing here has run on a GPU yet; both
parts ran on the CPU with the GPU probe faked and CPU settings (tiny data, torchrun with 1 process).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, host, params_for, pipeline_stages, run_stages

NETWORKS = ("classifier", "refiner", "segmenter")
# device cuda (an error, not a silent CPU run, if CUDA went away); AMP (auto: bf16, or fp16 with loss
# scaling) also for the two networks whose CPU default is fp32; loader workers with pinned memory
GPU_SETTINGS = [f"{n}.{k}" for n in NETWORKS for k in ("device=cuda", "precision=auto", "num_workers=4")]
TRAINING = ["train_classifier", "train_refiner", "label_round", "train_segmenter", "train_reference"]
METRICS = {"train_classifier": "classifier", "train_refiner": "refiner", "train_segmenter": "segmentation",
           "train_reference": "reference"}   # label_round@rK: rounds/rK/segmentation
SCORES = ("val_map", "val_miou", "val_miou_crf")


def gpu_or_exit() -> dict:
    """The GPU's description, or exit 3 with one line saying none is visible."""
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (built for CUDA "
              f"{torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
              "nothing to check here", file=sys.stderr)
        sys.exit(3)
    return {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(including_emulation=False)}


def summary(result: dict) -> dict:
    keep = ("final_loss", "precision", "device", "world_size", "batch_per_rank", "global_batch", *SCORES)
    return {k: result[k] for k in keep if k in result}


def torchrun_stage(stage: str, overrides: list[str], workdir: Path, nproc: int) -> dict:
    """One training stage under torchrun in workdir (the pipeline's artifacts are its inputs)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks", stage, "--params", str(REPO / "params.yaml"), *[a for s in overrides for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=workdir, env=env).returncode
    seconds = round(time.perf_counter() - start, 1)   # with the processes' start (torch, imports)
    return {"rc": rc, "seconds": seconds, **(stage_metrics(stage, workdir) if rc == 0 else {})}


def stage_metrics(stage: str, workdir: Path) -> dict:
    """The summary of a training stage's metrics file (label_round@rK: its segmenter's)."""
    group, _, key = stage.partition("@")
    name = f"rounds/{key}/segmentation" if key else METRICS[group]
    return summary(json.loads((workdir / "metrics" / f"{name}.json").read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes for the second part (GPUs)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--scratch", default="benchmarks/work/gpu_check")
    args = ap.parse_args()
    gpu = gpu_or_exit()   # first: fail fast, before any data is read
    if not args.root:
        sys.exit("gpu_check: no dataset: pass --root or set WSSS_VOC_MINI")
    overrides = [f"data.root={args.root}", *GPU_SETTINGS, f"distributed.nproc_per_node={args.nproc}", *args.set]
    params = params_for(args.root, overrides[1:])
    workdir = Path(args.scratch)
    RESULTS.mkdir(parents=True, exist_ok=True)

    # 1. the whole pipeline in this process (no torchrun), one GPU
    start = time.perf_counter()
    out = run_stages([s for s in pipeline_stages() if s != "demo"], {**params, "distributed": {"nproc_per_node": 1}},
                     workdir)
    record = {"name": "gpu_check", "root": args.root, "overrides": overrides, **gpu, **host(),
              "total_seconds": round(time.perf_counter() - start, 1),
              "stages": {s: {"seconds": r["seconds"], **summary(r["result"])} for s, r in out.items()}}
    (RESULTS / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")

    # 2. the training stages again under torchrun, beside their single-process figures
    training = [s for s in out if s.partition("@")[0] in TRAINING]
    runs = {s: {"one_process": {"seconds": out[s]["seconds"], **stage_metrics(s, workdir)}} for s in training}
    for stage in training:   # after the snapshot above: these overwrite the metrics files
        runs[stage]["torchrun"] = torchrun_stage(stage, overrides, workdir, args.nproc)
    failed = [s for s, r in runs.items() if r["torchrun"]["rc"] != 0]
    (RESULTS / "gpu_check_torchrun.json").write_text(json.dumps(
        {"name": "gpu_check_torchrun", "nproc": args.nproc, **gpu, **host(), "failed": failed, "stages": runs},
        indent=2) + "\n")
    print(json.dumps({"pipeline_seconds": record["total_seconds"], "failed_under_torchrun": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
