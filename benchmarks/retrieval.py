"""Retrieval mAP of SBA against SPoC, MAC and R-MAC of the same network on voc2012-mini, the
copy-score calibration of the near-duplicate threshold, and the train/val near-duplicate report.

    OMP_NUM_THREADS=1 python benchmarks/retrieval.py [--root $WSSS_VOC_MINI]
        [--checkpoint benchmarks/work/pipeline/voc_mini/artifacts/classifier.pt] [--networks classifier imagenet]
        [--limit N] [--no-write]

Every image (train + val, 591) is a query against all the others. Relevance (primary): the other
image contains the query's largest-area class, taken from the query's mask (ground truth used only
to score, never to build a descriptor). Also reported: `any_tag`, the tags-only equivalent (the two
images share at least one image-level tag), and `same_largest` (both images' largest-area class
agree). Descriptors: raw pooling of one forward pass per image at search.long_side, then L2,
PCA-whitening learned on the 591 images themselves (no labels), L2; the whitening dimension is swept.

Writes benchmarks/results/retrieval.jsonl + retrieval.md (every config x whitening), appends the
shipped-whitening rows (method sba, config sba|spoc|mac|rmac, retrieval_map) to seed_methods.jsonl,
and writes near_duplicates_voc_mini.json (train vs val pairs, the score distribution, the copy calibration).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import REPO, RESULTS, host, write_lines  # noqa: F401  (common puts the repo on sys.path)

from wsss.config.params import load  # noqa: E402
from wsss.dataset import images as image_ops  # noqa: E402
from wsss.dataset import voc  # noqa: E402
from wsss.retrieval import descriptors as D  # noqa: E402
from wsss.retrieval import neighbours  # noqa: E402
from wsss.retrieval.index import load_network  # noqa: E402

DEFAULT_CKPT = "benchmarks/work/pipeline/voc_mini/artifacts/classifier.pt"
WHITEN_DIMS = (0, 32, 64, 128, 256)
CALIBRATION_DIMS = (0, 32, 128, 256)
RULES = ("largest_area", "any_tag", "same_largest")


def dataset(root: Path, limit: int) -> tuple[list[str], list[str], list[set[int]], list[int]]:
    """ids, splits, tag sets (from the masks), largest-area class per image."""
    classes = voc.read_classes(root)
    ids, splits, tags, largest = [], [], [], []
    for split in ("train", "val"):
        names = voc.read_split(root, split)
        for image_id in names[:limit] if limit else names:
            mask = voc.load_mask(root, image_id, len(classes))
            counts = np.bincount(mask[mask < 255].ravel(), minlength=len(classes))
            counts[0] = 0
            ids.append(image_id)
            splits.append(split)
            tags.append(set(np.flatnonzero(counts).tolist()))
            largest.append(int(counts.argmax()))
    return ids, splits, tags, largest


def relevance(tags: list[set[int]], largest: list[int], rule: str) -> np.ndarray:
    n = len(tags)
    rel = np.zeros((n, n), bool)
    for q in range(n):
        for j in range(n):
            if rule == "largest_area":
                rel[q, j] = largest[q] in tags[j]
            elif rule == "any_tag":
                rel[q, j] = bool(tags[q] & tags[j])
            else:
                rel[q, j] = largest[q] == largest[j]
    np.fill_diagonal(rel, False)
    return rel


def mean_ap(x: np.ndarray, rel: np.ndarray) -> float:
    """Each row a query against every other row (itself excluded); AP averaged over queries with a relevant image."""
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]          # the query itself sorts last
    hits = np.take_along_axis(rel, order, axis=1)
    n_rel = hits.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision * hits).sum(axis=1) / np.maximum(n_rel, 1)
    return float(ap[n_rel > 0].mean() * 100)


def poolers(settings: D.Settings, detectors: dict[str, np.ndarray] | None) -> dict:
    """Pass 1 (detectors None): the selection statistics and the baselines; pass 2: SBA variants."""
    if detectors is None:
        return {"mean": D.mean_pooled,
                "spoc": lambda f: D.spoc(f, True), "spoc_plain": lambda f: D.spoc(f, False),
                "mac": D.mac, "rmac": lambda f: D.rmac(f, settings.rmac_levels)}
    out = {}
    for name, det in detectors.items():
        out[name] = lambda f, det=det: D.sba(f, det, settings.power, "concat")
        out[name + "+sum"] = lambda f, det=det: D.sba(f, det, settings.power, "sum")
    return out


def sba_detectors(mean: np.ndarray, shipped: D.Settings) -> dict[str, np.ndarray]:
    """The shipped selection, and the variants tried: other counts, the frequency rule, random channels."""
    rng = np.random.default_rng(0)
    # the index selects from up to select_images images, evenly spaced: the same here
    mean = mean[np.linspace(0, len(mean) - 1, min(len(mean), shipped.select_images)).round().astype(int)]
    found = {"sba": D.select_detectors(mean, shipped.detectors, shipped.selection)}
    for n in sorted({10, 25, 50, 100} - {shipped.detectors}):
        found[f"sba_n{n}"] = D.select_detectors(mean, n, "variance")
    found["sba_frequency"] = D.select_detectors(mean, shipped.detectors, "frequency")
    found["sba_random"] = rng.choice(mean.shape[1], shipped.detectors, replace=False)   # control: any channels
    found["sba_low_variance"] = np.argsort(mean.var(axis=0))[:shipped.detectors]           # control: the least varying
    return found


def selection_diagnostics(mean: np.ndarray, tags: list[set[int]], detectors: dict[str, np.ndarray]) -> dict:
    """Why one channel set makes better proposals than another: per channel, `class_share` = the
    largest share of its total response that the images of one class hold (1/C-ish: fires on every
    class; near 1: a one-class detector), `silent` = the fraction of images where it responds below
    10 % of its 99th-percentile response (a proposal there is spread over noise). Tags from masks:
    scoring only."""
    n_classes = max(max(t) for t in tags if t) + 1
    member = np.zeros((len(tags), n_classes), bool)
    for i, t in enumerate(tags):
        member[i, list(t)] = True
    out = {}
    for name, det in detectors.items():
        r = np.clip(mean[:, det], 0, None)
        per_class = np.stack([r[member[:, c]].sum(axis=0) for c in range(1, n_classes) if member[:, c].any()])
        share = per_class.max(axis=0) / np.maximum(per_class.sum(axis=0), 1e-12)
        silent = (r < 0.1 * np.percentile(r, 99, axis=0)).mean(axis=0)
        out[name] = {"class_share": round(float(share.mean()), 4), "silent": round(float(silent.mean()), 4),
                     "channels": len(det)}
    return out


@torch.no_grad()
def object_mass(model, root: Path, ids: list[str], detectors: dict[str, np.ndarray], settings: D.Settings,
                n: int = 120) -> dict:
    """SBA's premise measured: the share of each proposal's mass that falls on object pixels (any
    non-background class of the mask, area-averaged onto the feature grid; masks used only to score),
    averaged over proposals and `n` evenly spaced images; against the uniform map (= the object's area
    share, what plain sum pooling weighs by) and SPoC's centre prior."""
    n_classes = len(voc.read_classes(root))
    sums = {name: 0.0 for name in (*detectors, "uniform (sum pooling)", "centre prior (SPoC)")}
    picks = np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)
    for i in picks:
        image = image_ops.resize_long(voc.load_image(root, ids[i]), settings.long_side)
        features = D.feature_maps(model, image_ops.to_tensor(image)[None]).float()
        mask = voc.load_mask(root, ids[i], n_classes)
        objects = torch.from_numpy(((mask > 0) & (mask < 255)).astype(np.float32))[None, None]
        cells = torch.nn.functional.adaptive_avg_pool2d(objects, features.shape[2:])[0, 0]
        for name, det in detectors.items():
            sums[name] += float((D.proposals(features, det, settings.power)[0] * cells).sum(dim=(1, 2)).mean())
        sums["uniform (sum pooling)"] += float(cells.mean())
        prior = D.centre_prior(*features.shape[2:])
        sums["centre prior (SPoC)"] += float((prior / prior.sum() * cells).sum())
    return {name: round(v / len(picks), 4) for name, v in sums.items()}


def copies(image: np.ndarray) -> dict[str, np.ndarray]:
    """What a leak looks like: a horizontal flip, a JPEG re-encode (quality 75), a harsher one
    (quality 50 at 3/4 size), a centre crop keeping 90 % of each side."""
    h, w = image.shape[:2]

    def jpeg(img: Image.Image, quality: int) -> np.ndarray:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf).convert("RGB"))

    dy, dx = h // 20, w // 20
    return {"flip": np.ascontiguousarray(image[:, ::-1]), "jpeg75": jpeg(Image.fromarray(image), 75),
            "jpeg50_small": jpeg(Image.fromarray(image).resize((max(1, w * 3 // 4), max(1, h * 3 // 4)), Image.BILINEAR), 50),
            "crop90": np.ascontiguousarray(image[dy:h - dy, dx:w - dx])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("WSSS_VOC_MINI", ""))
    ap.add_argument("--checkpoint", default=DEFAULT_CKPT)
    ap.add_argument("--networks", nargs="+", default=["classifier", "imagenet"], choices=["classifier", "imagenet"])
    ap.add_argument("--limit", type=int, default=0, help="first N images of each split (0: all)")
    ap.add_argument("--copies", type=int, default=60, help="images whose flipped / re-encoded copies calibrate the threshold")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--duplicates-only", action="store_true",
                    help="only the copy calibration and near_duplicates_voc_mini.json (classifier network)")
    args = ap.parse_args()
    root = Path(args.root)
    if not root.is_dir():
        sys.exit("set WSSS_VOC_MINI or --root to the voc2012-mini folder")
    section = load(REPO / "params.yaml")["search"]
    shipped = D.Settings.from_section(section)
    threshold = section["threshold"]
    device = torch.device("cpu")
    torch.manual_seed(0)

    if shipped.whiten_dim not in WHITEN_DIMS:
        sys.exit(f"search.whiten_dim {shipped.whiten_dim} is not among the swept {WHITEN_DIMS}")
    ids, splits, tags, largest = dataset(root, args.limit)
    rels = {rule: relevance(tags, largest, rule) for rule in RULES}
    sources = [lambda i=i: voc.load_image(root, i) for i in ids]
    print(f"{len(ids)} images ({splits.count('train')} train, {splits.count('val')} val); "
          f"long side {shipped.long_side}; whitening dims {WHITEN_DIMS}", flush=True)

    rows, table, timing, diagnostics = [], [], {}, {}
    kept: dict = {}
    networks = ["classifier"] if args.duplicates_only else args.networks
    for network in networks:
        model = load_network(network, args.checkpoint if network == "classifier" else None, device)
        start = time.perf_counter()
        base = D.extract_with(model, sources, poolers(shipped, None), shipped.long_side, shipped.batch_size,
                              device, desc=f"{network}: baselines")
        detectors = sba_detectors(base["mean"], shipped)
        if network == "classifier" or network not in diagnostics:
            diagnostics[network] = selection_diagnostics(
                base["mean"], tags, {k: detectors[k] for k in ("sba", "sba_frequency", "sba_random", "sba_low_variance")})
            diagnostics[network]["object_mass"] = object_mass(
                model, root, ids, {k: detectors[k] for k in ("sba", "sba_frequency", "sba_random", "sba_low_variance")},
                shipped)
            print(f"{network} selection diagnostics:", json.dumps(diagnostics[network]), flush=True)
        sba_raw = D.extract_with(model, sources, poolers(shipped, detectors), shipped.long_side,
                                 shipped.batch_size, device, desc=f"{network}: sba")
        timing[network] = round((time.perf_counter() - start) / len(ids), 4)
        raws = {"spoc": base["spoc"], "spoc_plain": base["spoc_plain"], "mac": base["mac"], "rmac": base["rmac"], **sba_raw}
        for name, raw in ({} if args.duplicates_only else raws).items():
            whitenings = D.Whitening.fit_many(D.l2_normalise(raw), [d for d in WHITEN_DIMS if d])
            for dim in WHITEN_DIMS:
                x = D.finish(raw, whitenings[dim] if dim else None)
                scores = {rule: round(mean_ap(x, rel), 2) for rule, rel in rels.items()}
                table.append({"network": network, "config": name, "whiten_dim": dim, "dims": x.shape[1],
                              **{f"map_{r}": v for r, v in scores.items()}})
                print(f"{network:10s} {name:22s} whiten {dim:3d}: " +
                      "  ".join(f"{r} {v:5.2f}" for r, v in scores.items()), flush=True)
        if network == "classifier" or not kept:
            name = {"sba": "sba" if shipped.aggregate == "concat" else "sba+sum",
                    "spoc": "spoc" if shipped.centre_prior else "spoc_plain"}.get(shipped.method, shipped.method)
            kept = {"network": network, "model": model, "raw": raws[name], "detectors": detectors["sba"]}

    # the shipped whitening's rows for seed_methods.jsonl
    for network in ([] if args.duplicates_only else networks):
        shipped_name = {"sba": "sba" if shipped.aggregate == "concat" else "sba+sum",
                        "spoc": "spoc" if shipped.centre_prior else "spoc_plain", "mac": "mac", "rmac": "rmac"}
        for config in D.METHODS:
            r = next(t for t in table if t["network"] == network and t["config"] == shipped_name[config]
                     and t["whiten_dim"] == shipped.whiten_dim)
            rows.append({"method": "sba", "config": config, "retrieval_map": r["map_largest_area"],
                         "retrieval_map_any_tag": r["map_any_tag"], "retrieval_map_same_largest": r["map_same_largest"],
                         "relevance": "largest_area (primary): the database image contains the query's largest-area "
                                      "class (query mask, scoring only); any_tag: they share a tag",
                         "network": network, "checkpoint": args.checkpoint if network == "classifier" else
                         "EfficientNet-Lite0 ImageNet, untrained here", "whiten_dim": shipped.whiten_dim,
                         "settings": {k: v for k, v in shipped.to_dict().items() if k != "method"},
                         "seconds_per_image_all_configs": timing[network], "n_images": len(ids),
                         "split": "train+val", "seed": 0,
                         "note": "benchmarks/retrieval.py; every image a query against the other images", **host()})

    # copies of a few images against the originals: where a near-duplicate threshold belongs, per whitening
    model, raw, det = kept["model"], kept["raw"], kept["detectors"]
    picks = np.linspace(0, len(ids) - 1, min(args.copies, len(ids))).round().astype(int)
    kinds = list(copies(np.zeros((8, 8, 3), np.uint8)))
    copy_raw = {kind: [] for kind in kinds}
    for i in picks:
        made = copies(voc.load_image(root, ids[i]))
        pooled = D.extract(model, list(made.values()), shipped, device, [shipped.method], det,
                           desc=f"copies {ids[i]}")[shipped.method]
        for kind, vec in zip(made, pooled):
            copy_raw[kind].append(vec)
    calibration = {}
    calibration_dims = sorted(set(CALIBRATION_DIMS) | {shipped.whiten_dim, shipped.duplicate_whiten_dim})
    whitenings = D.Whitening.fit_many(D.l2_normalise(raw), [d for d in calibration_dims if d])
    for dim in calibration_dims:
        w = whitenings[dim] if dim else None
        xd = D.finish(raw, w)
        entry = {}
        for kind in kinds:
            scores = np.sum(D.finish(np.stack(copy_raw[kind]), w) * xd[picks], axis=1)
            entry[kind] = {"min": round(float(scores.min()), 4), "median": round(float(np.median(scores)), 4)}
        others = xd @ xd.T
        np.fill_diagonal(others, -np.inf)
        distinct_best = others.max(axis=1)
        entry["distinct_best"] = {f"p{q}": round(float(np.percentile(distinct_best, q)), 4) for q in (50, 90, 99)}
        entry["distinct_best"]["max"] = round(float(distinct_best.max()), 4)
        calibration[f"whiten_{dim}"] = entry
        print(f"copy calibration ({shipped.method}, whiten {dim}):", json.dumps(entry), flush=True)
    dup_dim = min(shipped.duplicate_whiten_dim, len(ids) // 2)   # the index's cap (descriptors.fit_whitening)
    x = D.finish(raw, D.fit_whitening(raw, dup_dim))

    # the train/val near-duplicate report as the command makes it (duplicate_whiten_dim, the shipped
    # threshold), and the closest pairs whatever their score
    pairs = neighbours.near_duplicates(x, ids, splits, threshold, "train", "val")
    closest = neighbours.near_duplicates(x, ids, splits, -1.0, "train", "val")[:15]
    best = neighbours.best_match_scores(x, splits, "train", "val")
    report = {"network": kept["network"], "method": shipped.method, "threshold": threshold,
              "whiten_dim": dup_dim, "n_train": splits.count("train"), "n_val": splits.count("val"),
              "n_pairs": len(pairs), "pairs": pairs, "closest_pairs": closest,
              "best_val_to_train": {f"p{q}": round(float(np.percentile(best, q)), 4) for q in (50, 90, 99)} |
                                   {"max": round(float(best.max()), 4)},
              "copy_calibration": calibration, "copies_of": len(picks), **host()}
    print(f"near duplicates train vs val at {threshold}: {len(pairs)} pairs; closest: "
          + ", ".join(f"{p['a']}~{p['b']} {p['score']:.3f}" for p in closest[:5]), flush=True)

    lines = ["| network | config | whiten | dims | mAP largest-area | mAP any-tag | mAP same-largest |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['network']} | {t['config']} | {t['whiten_dim']} | {t['dims']} | {t['map_largest_area']:.2f} | "
              f"{t['map_any_tag']:.2f} | {t['map_same_largest']:.2f} |" for t in table]
    print("\n".join(lines))
    if args.no_write:
        return
    (RESULTS / "near_duplicates_voc_mini.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "retrieval_selection.json").write_text(json.dumps({"detectors": shipped.detectors, **diagnostics,
                                                                  **host()}, indent=2) + "\n")
    if args.duplicates_only:
        print(f"-> {RESULTS}/near_duplicates_voc_mini.json")
        return
    write_lines("retrieval.md", lines)
    with (RESULTS / "retrieval.jsonl").open("a") as f:
        for t in table:
            f.write(json.dumps({**t, "n_images": len(ids), **host()}) + "\n")
    with (RESULTS / "seed_methods.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"-> {RESULTS}/retrieval.md, retrieval.jsonl, seed_methods.jsonl (+{len(rows)} rows), near_duplicates_voc_mini.json")


if __name__ == "__main__":
    main()
