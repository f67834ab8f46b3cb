"""Cost of decoding every image in the manifest stage: this tree against a baseline commit.

    python benchmarks/manifest_decode.py --root $WSSS_VOC_MINI [--baseline main] [--runs 3]

Each run is a fresh `python -m tasks manifest --set data.root=ROOT` in a scratch directory, with
tracking off (WSSS_TRACKING=off), timed from outside: interpreter start, imports and the worker
processes included, as `dvc repro` pays them. Wall seconds, and CPU seconds (user + system of the
process and its workers: what a busy machine cannot hide). Cases: the baseline tree (`git archive`d
into the scratch directory, same interpreter; Image.verify() only), and this tree decoding in one
process and over one spawned worker per core (dataset.voc.PARALLEL_FROM set for the run). One
untimed warm-up each (page cache, bytecode), then the cases take turns, so a busy neighbour slows
all alike; medians. Writes benchmarks/results/manifest_decode.json (raw record) and .md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from common import REPO, RESULTS, host, write_lines

from dataset import voc


def export_tree(ref: str, dest: Path) -> str:
    """The tree of `ref` under dest; returns the full commit id."""
    sha = subprocess.run(["git", "rev-parse", ref], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest)
    return sha


# `python -m tasks ...` with dataset.voc.PARALLEL_FROM set first (runpy keeps tasks.__main__ the
# main module, so spawned workers start as they do under the real command)
WITH_THRESHOLD = ("import runpy, sys; import dataset.voc as v; v.PARALLEL_FROM = int(sys.argv.pop(1)); "
                  "sys.argv[0] = 'tasks'; runpy.run_module('tasks', run_name='__main__', alter_sys=True)")


def time_manifest(tree: Path, root: str, workdir: Path, parallel_from: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one manifest run."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WSSS_TRACKING": "off", "PYTHONPATH": str(tree)}
    start = ["-m", "tasks"] if parallel_from is None else ["-c", WITH_THRESHOLD, str(parallel_from)]
    cmd = [sys.executable, *start, "manifest", "--params", str(tree / "params.yaml"), "--set", f"data.root={root}"]
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, check=True, capture_output=True)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    ap.add_argument("--baseline", default="main", help="git ref of the verify-only manifest")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scratch", default="/tmp/wsss-manifest-decode")
    args = ap.parse_args()
    if not args.root:
        sys.exit("no dataset: pass --root or set WSSS_VOC_MINI")
    scratch = Path(args.scratch)
    sha = export_tree(args.baseline, scratch / "baseline-tree")
    cases = {  # name: (tree, PARALLEL_FROM or None for the tree's own code, what it checks)
        "baseline": (scratch / "baseline-tree", None, f"{sha[:7]}: Image.verify()"),
        "decode_1_process": (REPO, 10**9, "this tree: full decode, in the stage's process"),
        "decode_pool": (REPO, 0, f"this tree: full decode, {cores()} spawned workers"),
    }
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for run in range(args.runs + 1):  # run 0 is the warm-up
        for name, (tree, parallel_from, _) in cases.items():
            w, c = time_manifest(tree, args.root, scratch / f"work-{name}", parallel_from)
            if run:
                wall[name].append(round(w, 3))
                cpu[name].append(round(c, 3))
    outputs = {name: (scratch / f"work-{name}" / "artifacts/manifest.parquet").read_bytes() for name in cases}
    median = {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])} for name in cases}
    info = host()
    record = {"root": args.root, "baseline": {"ref": args.baseline, "commit": sha}, "runs": args.runs, **info,
              "load_average": os.getloadavg(), "workers": cores(), "wall_seconds": wall, "cpu_seconds": cpu,
              "medians": median, "same_manifest_bytes": len(set(outputs.values())) == 1}
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"`python -m tasks manifest` on {args.root} ({info['date']}, {info['cpus']} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the end, tracking off); medians of {args.runs} runs after a warm-up.", "",
             "| case | wall s | CPU s | wall runs | CPU runs |", "|---|---|---|---|---|"]
    for name, (_, _, what) in cases.items():
        lines.append(f"| {what} | {median[name]['wall']:.2f} | {median[name]['cpu']:.2f} | {wall[name]} | {cpu[name]} |")
    n_images = len(pq.read_table(scratch / "work-baseline" / "artifacts/manifest.parquet"))
    record["images"] = n_images
    lines += ["", f"{n_images} images; this tree's default (dataset.voc.PARALLEL_FROM = {voc.PARALLEL_FROM}) decodes "
              f"{'over the workers' if n_images >= voc.PARALLEL_FROM else 'in the stage process'} here. "
              f"Manifests byte-identical across the cases: {record['same_manifest_bytes']}"]
    (RESULTS / "manifest_decode.json").write_text(json.dumps(record, indent=2) + "\n")
    for line in lines:
        print(line, flush=True)
    write_lines("manifest_decode.md", lines)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
