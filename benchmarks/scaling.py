"""Cost as the data grows: wall time and peak memory of the per-image stages at N images.

    nice -n 19 python benchmarks/scaling.py --sizes 1000 3000 10000 --image-size 96 [--budget-s 1500]

Generates a synthetic dataset of max(N) train images (+ --val images) in the VOC layout under
--scratch (never in the repository): the demo's scenes (wsss/dataset/demo.py, render_scene), each image
from its own seed, so any N is the first N of the largest set (train_N.txt lists them). A classifier
checkpoint with ImageNet Lite0 weights and a random (seeded) CAM head is written, not trained: these
stages' time does not depend on the weights. Then, for each N, in a fresh folder, the stages
`manifest`, `export_maps` and `pseudo_labels` run as `python -m tasks STAGE` subprocesses with
params.yaml plus `rounds={}`, `pseudo_labels.maps=artifacts/maps` (labels straight from the CAMs),
`data.train_split=train_N` and any --set, tracking off (WSSS_TRACKING=off). Per stage:

  wall_seconds          the subprocess, start to exit (interpreter and imports included)
  stage_seconds         the stage's own figure where it reports one (metrics/<name>.json "seconds")
  peak_rss_tree_mb      the largest sum of RSS over the stage process and all its descendants
                        (worker pools), sampled every --poll seconds with psutil: a peak shorter
                        than that can be missed, and pages shared between processes count once each
  peak_rss_stage_mb     the same sampling, the stage process alone
  max_rss_one_mb        ru_maxrss from os.wait4 on the stage process: the largest RSS any single
                        process of the tree reached (the stage's own, or a waited-for worker's), exact
  cpu_seconds           user + system CPU of the stage and its waited-for workers (os.wait4): unlike
                        the wall time, barely moved by other jobs on the machine

Rows go to --results/scaling.jsonl as each stage ends (with the load average before and after:
other jobs on the machine slow the times but not the memory), the table to scaling.md. With
--budget-s (counted from the start, data generation included) a stage is skipped, and recorded as
skipped, when the last size's wall seconds per image (fixed costs included: an overestimate for a
larger N) project it past the budget, and a stage still running when the budget runs out is killed
(recorded as skipped); the stages after a skipped one at that N are skipped too.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from common import REPO, RESULTS, host, write_lines  # noqa: F401  (common puts REPO on sys.path)
from wsss.dataset.demo import CLASSES, render_scene
from wsss.dataset.images import palette_png

STAGES = ["manifest", "export_maps", "pseudo_labels"]
METRICS = {"manifest": None, "export_maps": "maps", "pseudo_labels": "pseudo_labels"}
FIXED = ["rounds={}", "pseudo_labels.maps=artifacts/maps"]


def _write_image(job: tuple[str, str, int, int]) -> None:
    root, image_id, seed, size = job
    image, mask = render_scene(np.random.default_rng(seed), size)
    Image.fromarray(image).save(Path(root) / "JPEGImages" / f"{image_id}.jpg", quality=92)
    palette_png(mask).save(Path(root) / "SegmentationClass" / f"{image_id}.png")


def make_dataset(root: Path, n_train: int, n_val: int, size: int, seed: int = 0, workers: int = 2) -> float:
    """The synthetic VOC-layout set (reused when its stamp matches); returns the seconds it took."""
    stamp = {"n_train": n_train, "n_val": n_val, "image_size": size, "seed": seed}
    if (root / "scaling.json").exists() and json.loads((root / "scaling.json").read_text()) == stamp:
        return 0.0
    start = time.perf_counter()
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    ids = {"train": [f"syn_train_{i:06d}" for i in range(n_train)], "val": [f"syn_val_{i:05d}" for i in range(n_val)]}
    jobs = [(str(root), image_id, seed * 10_000_019 + k + (0 if split == "train" else 5_000_000), size)
            for split, names in ids.items() for k, image_id in enumerate(names)]
    with mp.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_image, jobs, chunksize=64):
            pass
    for split, names in ids.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "scaling.json").write_text(json.dumps(stamp))
    return time.perf_counter() - start


def write_split(root: Path, n: int) -> str:
    names = (root / "ImageSets/Segmentation/train.txt").read_text().split()[:n]
    (root / "ImageSets/Segmentation" / f"train_{n}.txt").write_text("\n".join(names) + "\n")
    return f"train_{n}"


def write_checkpoint(path: Path, overrides: list[str]) -> str:
    """The classifier as train_classifier would save it, untrained head (seeded): what the stage reads."""
    import torch

    from wsss.config.params import load
    from models.classifier import build_localizer
    from models.networks import to_config
    from wsss.training import checkpoints

    cfg = load(REPO / "params.yaml", overrides)["classifier"]
    torch.manual_seed(cfg["seed"])
    model = build_localizer(cfg, len(CLASSES) - 1)
    checkpoints.save(path, model, to_config("localizer", cfg, list(CLASSES)))
    return f"{cfg['backbone']} (pretrained={cfg['pretrained']}), CAM head random (seed {cfg['seed']}), untrained"


def run_measured(cmd: list[str], cwd: Path, env: dict, poll: float, log: Path, kill_after: float = 0) -> dict:
    """Run cmd; peak RSS of it and of its process tree (psutil sampling), ru_maxrss (os.wait4).
    kill_after > 0: the tree is killed after that many seconds ("killed": true)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_main = most = 0
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            tree = [ps, *ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        total = 0
        for p in tree:
            try:
                rss = p.memory_info().rss
            except psutil.Error:   # ended between listing and reading
                continue
            total += rss
            if p.pid == proc.pid:
                peak_main = max(peak_main, rss)
        peak_tree, most = max(peak_tree, total), max(most, len(tree))
        if kill_after and time.perf_counter() - start > kill_after and not killed:
            for p in reversed(tree):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            killed = True
        time.sleep(poll)
    proc.returncode = os.waitstatus_to_exitcode(status)
    mb = 1 << 20
    return {"rc": proc.returncode, "wall_seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),   # the tree's, waited-for workers included
            "peak_rss_tree_mb": round(peak_tree / mb, 1), "peak_rss_stage_mb": round(peak_main / mb, 1),
            "max_rss_one_mb": round(usage.ru_maxrss / 1024, 1),   # Linux: KiB
            "processes_max": most, **({"killed": True} if killed else {})}


def _previous_rate(rows: list[dict], stage: str) -> float | None:
    done = [r for r in rows if r["stage"] == stage and not r.get("skipped") and r["rc"] == 0]
    return done[-1]["wall_seconds"] / done[-1]["n_images"] if done else None


def table(rows: list[dict], meta: dict) -> list[str]:
    lines = [
        f"Per-image stages on a synthetic dataset of N images ({meta['image_size']}x{meta['image_size']} px, "
        f"the demo's scenes), commit {meta['commit']}, {meta['date']}, {meta['cpus']} CPUs, OMP_NUM_THREADS={meta['threads']}, "
        f"pseudo_labels.workers={meta['label_workers']}. Classifier: {meta['checkpoint']}.",
        f"Settings: params.yaml + {' '.join(meta['overrides'])}; tracking off. Command: `{meta['command']}`.",
        "Memory: tree = the stage process plus its workers, sampled every "
        f"{meta['poll']} s (psutil, RSS summed); one = the largest single process (ru_maxrss, os.wait4).",
        "",
        "| N | stage | wall s | s / image | stage's own s | CPU s | peak RSS tree MB | peak RSS stage MB | max RSS one process MB | load avg (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["n_images"], STAGES.index(r["stage"]))):
        if r.get("skipped"):
            lines.append(f"| {r['n_images']} | {r['stage']} | skipped: {r['reason']} | | | | | | | |")
            continue
        lines.append(f"| {r['n_images']} | {r['stage']} | {r['wall_seconds']} | {r['seconds_per_image']} | "
                     f"{r.get('stage_seconds', '-')} | {r['cpu_seconds']} | {r['peak_rss_tree_mb']} | {r['peak_rss_stage_mb']} | "
                     f"{r['max_rss_one_mb']} | {r['loadavg_before']} / {r['loadavg_after']} |")
    return lines


VOC_SBD = {"train_aug": 10_582, "val": 1_449}   # PASCAL VOC 2012 + SBD: the train_aug list and VOC's val


def projection() -> tuple[dict, list[str]]:
    """Full VOC 2012 + SBD on this machine, from real VOC-size per-stage times (linear in images at
    fixed epochs): the pipeline record on voc2012-mini (330 train, 261 val), plus the records of
    what the label-round defaults added since (label round r1, superpixel voting), which ran on contended cores."""
    pipe = json.loads((RESULTS / "pipeline_voc_mini.json").read_text())
    st = {k: v["result"] for k, v in pipe["stages"].items()}
    n_train, n_val = st["manifest"]["images"]["train"], st["manifest"]["images"]["val"]
    tr, va = VOC_SBD["train_aug"] / n_train, VOC_SBD["val"] / n_val
    r1 = {k: json.loads((RESULTS / "rounds_voc_mini/r1" / f"{k}.json").read_text())
          for k in ("pseudo_labels", "segmentation", "maps")}
    held = json.loads((RESULTS / "label_memory.json").read_text())
    sp = [json.loads(line) for line in (RESULTS / "seed_methods.jsonl").read_text().splitlines() if line.strip()]
    sp_on = next(r for r in sp if r["config"] == {"enabled": True, "n_segments": 400, "threshold": 0.5, "vote_min": 0.6,
                                                   "min_labelled": 0.2, "undecided": "keep"})
    pl = "pipeline_voc_mini.json"
    rows = [  # stage, part, seconds measured, source, factor, contended
        ("manifest", "train + val images", pipe["stages"]["manifest"]["seconds"], pl,
         sum(VOC_SBD.values()) / (n_train + n_val), False),
        ("train_classifier", "training, 15 epochs", st["train_classifier"]["train_seconds"], pl, tr, False),
        ("train_classifier", "val scores", pipe["stages"]["train_classifier"]["seconds"] - st["train_classifier"]["train_seconds"], pl, va, False),
        ("export_maps", "train images", st["export_maps"]["seconds"], pl, tr, False),
        ("train_refiner", "training, 8 epochs", st["train_refiner"]["train_seconds"], pl, tr, False),
        ("export_refined", "train images", st["export_refined"]["seconds"], pl, tr, False),
        ("label_round@r1", "labels (no superpixels)", r1["pseudo_labels"]["seconds"], "rounds_voc_mini/r1/pseudo_labels.json", tr, False),
        ("label_round@r1", "segmenter training, 14 epochs", r1["segmentation"]["train_seconds"], "rounds_voc_mini/r1/segmentation.json", tr, True),
        ("label_round@r1", "segmenter on val (1 scale)", r1["segmentation"]["eval_seconds"], "rounds_voc_mini/r1/segmentation.json", va, True),
        ("label_round@r1", "predictions + mining on train", r1["maps"]["seconds"], "rounds_voc_mini/r1/maps.json", tr, True),
        ("pseudo_labels", "labels + superpixel voting", sp_on["stage_seconds"], "seed_methods.jsonl (vote_min 0.6)", tr, True),
        ("train_segmenter", "training, 14 epochs", st["train_segmenter"]["train_seconds"], pl, tr, False),
        ("train_segmenter", "val, 4 scales + flip, + CRF", st["train_segmenter"]["eval_seconds"], pl, va, False),
        ("train_reference", "training, 14 epochs", st["train_reference"]["train_seconds"], pl, tr, False),
        ("train_reference", "val", st["train_reference"]["eval_seconds"], pl, va, False),
    ]
    out = [{"stage": a, "part": b, "measured_seconds": round(c, 1), "record": f"benchmarks/results/{d}",
            "factor": round(e, 3), "projected_seconds": round(c * e), "contended_record": f} for a, b, c, d, e, f in rows]
    total = sum(r["projected_seconds"] for r in out)
    record = {"what": "full PASCAL VOC 2012 + SBD (train_aug 10,582, val 1,449) projected on this 2-CPU machine "
                      "from VOC-size per-stage times on voc2012-mini (330 train, 261 val), linear in images at "
                      "today's epochs", "voc_sbd": VOC_SBD, "rows": out, "total_seconds": total,
              "from_contended_records_seconds": sum(r["projected_seconds"] for r in out if r["contended_record"]),
              "one_gpu": "unmeasured: the benchmarks' GPU check gives it",
              "held_in_memory": {   # the training stages hold every image's labels or maps, compressed
                  "what": "train_segmenter and each label round hold every training image's labels "
                          "(labelstore.read_dict), train_refiner every image's maps (mapstore.read_dict), "
                          "zlib-compressed; scaled from voc2012-mini's stores to train_aug",
                  "record": "benchmarks/results/label_memory.json",
                  **{k: {f: held[k][f] for f in ("ratio", "train_aug_raw_gb_at_this_mean_size",
                                                  "train_aug_held_mb_at_this_ratio")} for k in ("labels", "maps")}}}
    lines = ["", "## Projection: full PASCAL VOC 2012 + SBD on this machine", "",
             f"train_aug {VOC_SBD['train_aug']:,} images, val {VOC_SBD['val']:,}, at VOC size (~500x375), the 2 CPUs "
             "here. Each part's measured seconds on voc2012-mini (330 train / 261 val real VOC images) times the "
             "ratio of images (train x32.07, val x5.55): training at today's epochs is linear in images. "
             "Records marked * ran on cores shared with another run (the round's segmenter trained in "
             f"{r1['segmentation']['train_seconds']} s there against {st['train_segmenter']['train_seconds']} s for "
             "the same training in the pipeline record), so those rows are upper bounds. One GPU: unmeasured; "
             "the benchmarks' GPU check gives it. Raw: `scaling_projection.json`.", "",
             "| stage | part | measured s (voc2012-mini) | x | projected s | record |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['part']} | {r['measured_seconds']}{' *' if r['contended_record'] else ''} | "
              f"{r['factor']} | {r['projected_seconds']:,} | `{r['record'].removeprefix('benchmarks/results/')}` |" for r in out]
    marked = sum(r["projected_seconds"] for r in out if r["contended_record"])
    lab, maps = held["labels"], held["maps"]
    lines_after = ["", f"Held in memory, not streamed: `train_segmenter` and each label round hold every training "
                       f"image's labels, `train_refiner` every image's maps, zlib-compressed: for train_aug about "
                       f"{lab['train_aug_held_mb_at_this_ratio']:.0f} MB of labels (raw "
                       f"{lab['train_aug_raw_gb_at_this_mean_size']} GB, {lab['ratio']}x) and "
                       f"{maps['train_aug_held_mb_at_this_ratio']:.0f} MB of maps (raw "
                       f"{maps['train_aug_raw_gb_at_this_mean_size']} GB, {maps['ratio']}x), scaled from "
                       "voc2012-mini's stores (`label_memory.json`)."]
    lines.append(f"| **total** | | | | **{total:,}** (~{total / 3600:.0f} h; {marked:,} of it from the * rows) | |")
    return record, lines + lines_after


def compact(jsonl: Path) -> list[str]:
    """The docs' compact table: one row per N and stage, from a scaling.jsonl."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    lines = ["| N | stage | wall s | CPU s | CPU ms / image | peak RSS, stage + workers (MB) | largest process (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (STAGES.index(r["stage"]), r["n_images"])):
        if r.get("skipped"):
            lines.append(f"| {r['n_images']:,} | {r['stage']} | skipped ({r['reason']}) | | | | |")
        else:
            lines.append(f"| {r['n_images']:,} | {r['stage']} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                         f"{1000 * r['cpu_seconds'] / r['n_images']:.1f} | {r['peak_rss_tree_mb']:.0f} | {r['max_rss_one_mb']:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--val", type=int, default=16, help="val images (the manifest scans them; nothing else does)")
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scratch", default="benchmarks/work/scaling")
    ap.add_argument("--results", default=str(RESULTS), help="where scaling.jsonl and scaling.md go")
    ap.add_argument("--name", default="scaling")
    ap.add_argument("--budget-s", type=float, default=0, help="skip stages projected past this many seconds (0: none)")
    ap.add_argument("--poll", type=float, default=0.1)
    ap.add_argument("--projection-only", action="store_true",
                    help="write scaling_projection.json (full VOC + SBD from the VOC-size records) and print it; run nothing")
    ap.add_argument("--readme", action="store_true", help="print the docs' compact table from --results/--name .jsonl")
    args = ap.parse_args()
    if args.readme:
        print("\n".join(compact(Path(args.results) / f"{args.name}.jsonl")))
        return
    record, projected = projection()
    if args.projection_only:
        (RESULTS / "scaling_projection.json").write_text(json.dumps(record, indent=2) + "\n")
        print("\n".join(projected))
        return

    start = time.perf_counter()   # --budget-s counts from here: generating the data set included
    scratch, results = Path(args.scratch), Path(args.results)
    data = scratch / f"data_{args.image_size}px"
    gen_seconds = make_dataset(data, max(args.sizes), args.val, args.image_size)
    print(f"dataset {data}: {max(args.sizes)} + {args.val} images ({gen_seconds:.0f} s to generate)", flush=True)
    checkpoint = scratch / "classifier.pt"
    described = write_checkpoint(checkpoint, args.set)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WSSS_TRACKING": "off"}
    label_workers = args.set and next((s.split("=", 1)[1] for s in args.set if s.startswith("pseudo_labels.workers=")), None)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    meta = {**host(), "commit": commit + ("+changes" if dirty else ""), "image_size": args.image_size, "checkpoint": described, "overrides": FIXED + args.set,
            "poll": args.poll, "label_workers": label_workers or f"0 (all cores: {os.cpu_count()})",
            "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:])}
    results.mkdir(parents=True, exist_ok=True)
    jsonl = results / f"{args.name}.jsonl"
    jsonl.write_text("")
    rows: list[dict] = []
    for n in args.sizes:   # in the order given: e.g. 1000 10000 3000 measures the widest span first under a budget
        split = write_split(data, n)
        work = scratch / f"run_{args.image_size}px_{n}"
        if work.exists():
            subprocess.run(["rm", "-rf", str(work)], check=True)
        (work / "artifacts").mkdir(parents=True)
        (work / "artifacts/classifier.pt").symlink_to(checkpoint)
        overrides = [f"data.root={data}", f"data.train_split={split}", "data.val_split=val", *FIXED, *args.set]
        for stage in args.stages:
            base = {"n_images": n, "stage": stage, "image_size": args.image_size, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
            rate = _previous_rate(rows, stage)
            left = args.budget_s - (time.perf_counter() - start)
            upstream = [r["stage"] for r in rows if r["n_images"] == n and r.get("skipped")]
            if upstream:
                row = {**base, "skipped": True, "reason": f"needs the output of {upstream[0]}, skipped"}
            elif args.budget_s and rate is not None and rate * n > left:
                row = {**base, "skipped": True, "reason": f"projected {rate * n:.0f} s > {max(left, 0):.0f} s left of --budget-s"}
            else:
                before = round(os.getloadavg()[0], 2)
                cmd = [sys.executable, "-m", "tasks", stage, "--params", str(REPO / "params.yaml")]
                cmd += [a for o in overrides for a in ("--set", o)]
                kill_after = max(1.0, left) if args.budget_s else 0
                row = {**base, **run_measured(cmd, work, env, args.poll, work / f"{stage}.log", kill_after),
                       "loadavg_before": before, "loadavg_after": round(os.getloadavg()[0], 2)}
                row["seconds_per_image"] = round(row["wall_seconds"] / n, 4)
                name = METRICS[stage]
                if name and (work / "metrics" / f"{name}.json").exists():
                    row["stage_seconds"] = json.loads((work / "metrics" / f"{name}.json").read_text()).get("seconds")
                if row.get("killed"):
                    row = {**row, "skipped": True, "reason": f"killed when --budget-s ran out, after {row['wall_seconds']:.0f} s"}
                elif row["rc"] != 0:
                    print((work / f"{stage}.log").read_text()[-3000:], file=sys.stderr)
            rows.append(row)
            with open(jsonl, "a") as fh:
                fh.write(json.dumps({**row, "commit": meta["commit"], "threads": meta["threads"], "cpus": meta["cpus"],
                                     "overrides": meta["overrides"], "checkpoint": described}) + "\n")
            print(json.dumps(row), flush=True)
            if row.get("rc", 0) != 0 and not row.get("killed"):
                sys.exit(f"{stage} failed at N={n}: {work / (stage + '.log')}")
    lines = table(rows, meta) + projected
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
