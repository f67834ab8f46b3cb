"""Run real pipeline stages in a scratch directory and time them (shared by the benchmarks)."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from tasks.__main__ import expanded, run_stage, stages as pipeline_stages  # noqa: E402
from wsss.config.params import load  # noqa: E402


def params_for(root: str, overrides: list[str]) -> dict:
    return load(REPO / "params.yaml", [f"data.root={root}", *overrides])


def run_stages(stages: list[str], params: dict, workdir: Path) -> dict:
    """{stage: {"result": main's dict, "seconds": wall time}} for the stages, in order, in workdir."""
    unknown = [s for s in stages if s not in pipeline_stages()]
    if unknown:
        raise KeyError(f"unknown stage(s) {unknown}; stages: {pipeline_stages()}")
    workdir.mkdir(parents=True, exist_ok=True)
    here, out = os.getcwd(), {}
    os.chdir(workdir)
    try:  # a foreach stage (label_round) runs once per item: label_round@r1, ...
        for stage in [s for s in expanded(params) if s.partition("@")[0] in stages]:
            start = time.perf_counter()
            result = run_stage(stage, params)
            out[stage] = {"result": result, "seconds": round(time.perf_counter() - start, 1)}
    finally:
        os.chdir(here)
    return out


def train_score(checkpoint: Path, manifest: Path, params: dict, exclude=()) -> tuple[float | None, float]:
    """(mIoU of the trained network's predictions on the train split against its ground-truth masks,
    seconds): val's inference settings, no CRF. Scoring only. `exclude`: ids left out (a semi run's
    masked images, which it trained on)."""
    from wsss.training import checkpoints
    from wsss.training.runtime import resolve_device

    start = time.perf_counter()
    model, _ = checkpoints.load(checkpoint, resolve_device(params["segmenter"]["device"]))
    miou = split_score(model, manifest, params, params["data"]["train_split"], exclude)
    return miou, round(time.perf_counter() - start, 1)


def split_score(model, manifest: Path, params: dict, split: str, exclude=()) -> float | None:
    """mIoU of a network's predictions on a split's images (but `exclude`) against their masks: val's
    inference settings, no CRF. Scoring only."""
    import torch

    from wsss.dataset import voc
    from wsss.scoring.metrics import summary
    from wsss.training.runtime import resolve_device
    from wsss.training.segmentation import evaluate

    cfg = params["segmenter"]
    table, classes, root = voc.read_manifest(manifest)
    skip = set(exclude)
    rows = [r for r in voc.split_rows(table, split) if r["id"] not in skip]
    with torch.no_grad():
        plain, _, _ = evaluate(model, root, rows, len(classes), cfg, resolve_device(cfg["device"]), crf=False)
    return summary(plain, classes)["miou"] if plain.sum() else None


def write_lines(name: str, lines: list[str]) -> Path:
    """benchmarks/results/<name>: the table a benchmark printed, one line each."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text("\n".join(lines) + "\n")
    return path


def arms_args(doc: str, arms: dict, scratch: str, seeds: list[int], flags: dict | None = None):
    """Command line of a benchmark that runs each of `arms` (name -> params overrides) per seed;
    `flags`: the benchmark's own on/off switches, {"--name": help}."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds)
    ap.add_argument("--arms", nargs="+", default=list(arms), choices=list(arms))
    ap.add_argument("--scratch", default=scratch)
    ap.add_argument("--set", action="append", default=[], help="params override for every arm")
    ap.add_argument("--note", default="")
    ap.add_argument("--dry-run", action="store_true", help="print the rows, do not append them")
    for flag, text in (flags or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    args = ap.parse_args()
    if not args.root:
        sys.exit("no dataset: pass --root or set WSSS_VOC_MINI")
    return args


def copy_run(run: Path, work: Path, limit: int = 0, labels: bool = True):
    """work/artifacts: a finished run's manifest (the first `limit` rows of each split when limit > 0)
    and, if labels, its pseudo labels, copied (the run is only read). Returns the manifest table."""
    import shutil
    import pyarrow.parquet as pq
    manifest = run / "artifacts" / "manifest.parquet"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} not found: the source must be a finished pipeline directory")
    table = pq.read_table(manifest)
    if limit:
        keep, seen = [], {}
        for i, split in enumerate(table.column("split").to_pylist()):
            seen[split] = seen.get(split, 0) + 1
            if seen[split] <= limit:
                keep.append(i)
        table = table.take(keep)   # schema metadata (classes, root) travels with the table
    (work / "artifacts").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, work / "artifacts" / "manifest.parquet")
    if labels:
        source, target = run / "artifacts" / "pseudo_labels", work / "artifacts" / "pseudo_labels"
        if not source.is_dir():
            raise SystemExit(f"{source} not found: the run has no pseudo labels")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    return table


def append_row(row: dict, dry_run: bool = False, name: str = "seed_methods.jsonl") -> None:
    """Print a result row and (unless dry_run) append it to benchmarks/results/<name>."""
    import json
    print(json.dumps(row), flush=True)
    if not dry_run:
        with (RESULTS / name).open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows: what a record ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict:
    """The machine by what it is (CPU model and count), never by its host name."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "threads": os.environ.get("OMP_NUM_THREADS", "default")}
