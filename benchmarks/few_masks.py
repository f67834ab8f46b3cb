"""How many masks does a user need? val mIoU of the semi-supervised segmenter (stage train_semi)
for mask counts x methods x seeds, with the weak default and the fully supervised reference as lines.

    OMP_NUM_THREADS=2 python benchmarks/few_masks.py --masks 33 --methods masks+pseudo --seeds 0 1
    python benchmarks/few_masks.py --plot-only

Each row runs train_semi in its own scratch folder (--scratch/<method>_m<masks>_s<seed>_<hash of its
variant: semi.init, semi.pseudo_weight, --set and source_id, the source's fingerprint>) that holds a
copy of the source run's manifest and pseudo labels (--source, default benchmarks/work/pipeline/voc_mini: run_pipeline.py's run, only read), appends {masks, method,
seed, val_miou, wall_s, settings...} to benchmarks/results/few_masks.jsonl (rows already there with
the same masks, method, seed, epochs, limit and variant are skipped), and redraws the plot
(benchmarks/results/few_masks.png, also logged to MLflow). `seed` sets both semi.seed (which images
are masked) and segmenter.seed (training).
Settings are chosen on train scores: each row's train_miou is the segmenter's mIoU on the train
images it had no mask of (scoring only; --no-train-score skips it, --rescore adds it to older rows
whose scratch folder still holds the run).

Rows that make no sense are skipped and said so: masks_only and cyclegan with 0 masks (nothing to
learn from / no real mask), and masks+pseudo when every train image is masked (then it is
masks_only). --limit N keeps the first N train and N val images (for a quick check only).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from common import REPO, RESULTS, copy_run, host, params_for, run_stages, split_score, train_score
from wsss.config.params import SEMI_METHODS, SEMI_NEEDS_MASKS, SEMI_PSEUDO_ONLY

SOURCE = Path("benchmarks/work/pipeline/voc_mini")
METHODS = list(SEMI_METHODS)
TRAIN_SCORED_ON = "the unmasked train images' ground-truth masks (val inference settings, no CRF)"
WEAK, REFERENCE, TARGET = 41.16, 54.5, 47.0   # val mIoU: weak default, reference (330 masks), the target at 33


# always part of a variant: their defaults changed (init and pseudo_weight on 2026-11-28,
# cutmix's consistency weight on 2026-11-29), so a row says its value whether or not it was --set
EXPLICIT = ("semi.init", "semi.pseudo_weight", "semi.cutmix.consistency_weight")
CUTMIX_FIRST_WEIGHT = 1.0   # cutmix rows without settings.cutmix ran at the first default
SCORING_ONLY = ("semi.crf",)                     # changes the scores a run reports, not the run


def variant(row: dict) -> tuple[str, ...]:
    """What a row trained with beyond masks, method and seed: semi.init and semi.pseudo_weight always
    (rows without settings.init predate it and ran as_segmenter; masks_only reads no pseudo label, so
    its weight is left out), cutmix's consistency weight for cutmix rows, then the other --set
    overrides except scoring-only ones."""
    given = dict(o.split("=", 1) for o in row.get("overrides", []))
    settings = row.get("settings", {})
    init = settings.get("init") or given.get("semi.init", "as_segmenter")
    weight = [] if row["method"] == "masks_only" else [f"pseudo_weight={float(settings['pseudo_weight'])}"]
    fixed = [f"init={init}", *weight]
    if row["method"] == "cutmix":
        cutmix = settings.get("cutmix") or {}
        consistency = cutmix.get("consistency_weight", given.get("semi.cutmix.consistency_weight", CUTMIX_FIRST_WEIGHT))
        fixed.append(f"cutmix.consistency_weight={float(consistency)}")
    # rows before the source was fingerprinted (all on the first, bf16 build of it) have no source_id
    source = [f"source={row['source_id']}"] if row.get("source_id") else []
    return (*fixed, *(o for o in row.get("overrides", []) if o.split("=", 1)[0] not in EXPLICIT + SCORING_ONLY),
            *source)


def source_id(source: Path) -> str:
    """Fingerprint of what a row learns from in the source run: the weak segmenter (the semi start)
    and the pseudo labels. A rebuilt pipeline moved the semi default by 2 val points (docs/results.md),
    so rows compare only within one source: it is part of a row's variant."""
    digest = hashlib.sha1()
    files = [source / "artifacts/segmenter.pt", *sorted((source / "artifacts/pseudo_labels").glob("*"))]
    for path in files:
        if path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:8]


def key(row: dict) -> tuple:
    return (row["masks"], row["method"], row["seed"], row.get("epochs"), row.get("limit", 0), variant(row))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def prepare(work: Path, source: Path, limit: int, train_split: str, val_split: str) -> tuple[str, int]:
    """work/artifacts: the source's manifest (the first `limit` train and val images when limit > 0)
    and pseudo labels, copied; returns (data root, train images)."""
    table = copy_run(source, work, limit)   # the manifest's splits are train and val
    if (source / "artifacts/segmenter.pt").is_file():   # semi.init: weak_segmenter starts from it
        shutil.copy2(source / "artifacts/segmenter.pt", work / "artifacts/segmenter.pt")
    root = (table.schema.metadata or {})[b"root"].decode()
    return str(root), sum(1 for s in table.column("split").to_pylist() if s == train_split)


def skip_reason(masks: int, method: str, n_train: int) -> str | None:
    if masks > n_train:
        return f"only {n_train} train images"
    if masks == 0 and method in SEMI_NEEDS_MASKS:
        return "needs masks"
    if masks == n_train and method in SEMI_PSEUDO_ONLY:
        return "every image masked: the masks_only run"
    return None


def train_count(source: Path, limit: int) -> int:
    import pyarrow.parquet as pq
    n = pq.read_table(source / "artifacts/manifest.parquet", columns=["split"]).column("split").to_pylist().count("train")
    return min(n, limit) if limit else n


def workdir(scratch: str, row: dict) -> Path:
    """One scratch folder per row: its variant gets a short hash, so variants do not share one."""
    name = f"{row['method'].replace('+', '_')}_m{row['masks']}_s{row['seed']}"
    return Path(scratch) / (name + "_" + hashlib.sha1("\n".join(variant(row)).encode()).hexdigest()[:8])


def score_unmasked(work: Path, params: dict) -> tuple[float | None, float]:
    """(mIoU of the run's segmenter on the train images it had no mask of, seconds): the settings are
    chosen on these train scores, as for the weak stages (the masked images were trained on)."""
    from wsss.semi.masks import read_ids
    return train_score(work / "artifacts/semi/segmenter.pt", work / "artifacts/manifest.parquet", params,
                       exclude=read_ids(work / "artifacts/semi/masked_ids.txt"))


@contextmanager
def watched_rounds():
    """Scoring-only view of a semi.rounds run (the stage runs in this process): keeps each round's
    network and the labels each relabelling wrote, so the earlier rounds can be scored afterwards."""
    from wsss.semi import rounds, stage
    seen = {"models": [], "labels": []}
    real_fit, real_relabel = stage.fit_round, rounds.relabel

    def fit_round(*args, **kwargs):
        out = real_fit(*args, **kwargs)
        seen["models"].append(out[0])
        return out

    def relabel(*args, **kwargs):
        seen["labels"].append(real_relabel(*args, **kwargs))
        return seen["labels"][-1]
    stage.fit_round, rounds.relabel = fit_round, relabel
    try:
        yield seen
    finally:
        stage.fit_round, rounds.relabel = real_fit, real_relabel


def labels_mious(label_sets: list, ids: list[str], manifest: Path) -> list[float]:
    """mIoU of each label set ({id: array} or a label store) on `ids` against their masks, each mask
    read once for all of them. Scoring only."""
    import numpy as np

    from wsss.dataset import voc
    from wsss.scoring.metrics import confusion, summary
    _, classes, root = voc.read_manifest(manifest)
    n = len(classes)
    totals = np.zeros((len(label_sets), n, n), np.int64)
    for image_id in ids:
        mask = voc.load_mask(root, image_id, n)
        for total, labels in zip(totals, label_sets):
            total += confusion(mask, labels[image_id], n)
    return [summary(total, classes)["miou"] for total in totals]


def score_rounds(work: Path, params: dict, seen: dict) -> list[dict]:
    """Per earlier round: its network's val and unmasked-train mIoU, and the labels it wrote for the
    next round against the pipeline's pseudo labels, both on the unmasked train images."""
    from wsss.semi.masks import read_ids
    from wsss.stores import labelstore
    manifest = work / "artifacts/manifest.parquet"
    masked = read_ids(work / "artifacts/semi/masked_ids.txt")
    ids = sorted(seen["labels"][0])   # every relabelling labels the same (unmasked) images
    pseudo_miou, *written = labels_mious([labelstore.read_dict(work / "artifacts/pseudo_labels"), *seen["labels"]],
                                         ids, manifest)
    return [{"round": r, "val_miou": split_score(model, manifest, params, params["data"]["val_split"]),
             "train_miou": split_score(model, manifest, params, params["data"]["train_split"], masked),
             "labels_miou": miou, "pseudo_labels_miou": pseudo_miou}
            for r, (model, miou) in enumerate(zip(seen["models"][:-1], written), 1)]


def rescore(args, out: Path) -> None:
    """Add train_miou to full rows without one whose scratch folder still holds that very run (its
    metrics/semi.json has the row's val_miou); the rows file is rewritten atomically."""
    rows, changed = read_rows(out), 0
    for row in rows:
        if row.get("train_miou") is not None or row.get("limit"):
            continue
        work = workdir(args.scratch, row)
        metrics = work / "metrics/semi.json"
        if not metrics.is_file() or json.loads(metrics.read_text()).get("val_miou") != row["val_miou"]:
            print(f"rescore: {work} no longer holds masks={row['masks']} {row['method']} seed {row['seed']}: skipped")
            continue
        root = (work / "artifacts").resolve()   # params need a data.root; the manifest names the real one
        params = params_for(str(root), ["semi.enabled=true", *row.get("overrides", [])])
        row["train_miou"], row["train_score_seconds"] = score_unmasked(work, params)
        row["train_miou_scored_on"] = TRAIN_SCORED_ON
        changed += 1
        print(json.dumps({k: row[k] for k in ("masks", "method", "seed", "val_miou", "train_miou")}))
    if changed:
        from wsss.stores.atomic import write_text
        write_text("".join(json.dumps(r) + "\n" for r in rows), out)


def probe(args, masks: int, method: str, seed: int) -> dict:
    """The row a run would write, as far as key() and workdir() read it (settings from params.yaml + --set)."""
    from wsss.config.params import load
    semi = load(REPO / "params.yaml", [f"semi.masks={masks}", f"semi.method={method}", *args.set])["semi"]
    return {"masks": masks, "method": method, "seed": seed, "epochs": args.epochs or None, "limit": args.limit,
            "overrides": args.set, "source_id": args.source_id,
            "settings": {"init": semi["init"], "pseudo_weight": semi["pseudo_weight"],
                         **({"cutmix": semi["cutmix"]} if method == "cutmix" else {})}}


def run_row(args, planned: dict) -> dict | None:
    """Runs the row probe() planned (its scratch folder is named for it)."""
    masks, method, seed = planned["masks"], planned["method"], planned["seed"]
    reason = skip_reason(masks, method, train_count(Path(args.source), args.limit))
    if reason:
        print(f"skip masks={masks} {method}: {reason}")
        return None
    work = workdir(args.scratch, planned)
    root, _ = prepare(work, Path(args.source), args.limit, "train", "val")
    overrides = ["semi.enabled=true", f"semi.masks={masks}", f"semi.method={method}", f"semi.seed={seed}",
                 f"segmenter.seed={seed}", *([f"semi.epochs={args.epochs}"] if args.epochs else []), *args.set]
    params = params_for(root, overrides)
    semi = params["semi"]
    start = time.perf_counter()
    with watched_rounds() as seen:
        out = run_stages(["train_semi"], params, work)["train_semi"]["result"]
    train_miou, score_seconds = (None, None) if args.no_train_score else score_unmasked(work, params)
    wall = round(time.perf_counter() - start, 1)   # the stage and the train score, as in every row
    earlier = score_rounds(work, params, seen) if semi["rounds"] > 1 else None
    return {"masks": masks, "method": method, "seed": seed, "val_miou": out.get("val_miou"),
            "wall_s": wall, "val_miou_crf": out.get("val_miou_crf"),
            "train_miou": train_miou, "train_score_seconds": score_seconds,
            "train_miou_scored_on": TRAIN_SCORED_ON,
            "n_masks": out["n_masks"], "n_unmasked": out["n_unmasked"], "epochs": args.epochs or None,
            "limit": args.limit, "overrides": args.set, "train_seconds": out["train_seconds"],
            "eval_seconds": out["eval_seconds"], "step_seconds": out["step_seconds"], "steps": out["steps"],
            "settings": {"init": semi["init"], "mask_share": semi["mask_share"], "pseudo_weight": semi["pseudo_weight"],
                         "epoch_images": out["epoch_images"], "rampup": semi["rampup"],
                         "epochs": params["segmenter"]["epochs"] if not args.epochs else args.epochs,
                         "choice": semi["choice"],
                         **({"cotraining": semi["cotraining"]} if method == "cotraining" else {}),
                         **({"cutmix": semi["cutmix"]} if method == "cutmix" else {}),
                         **({"cyclegan": semi["cyclegan"], "generator_params": out.get("generator_params"),
                             "discriminator_params": out.get("discriminator_params")} if method == "cyclegan" else {}),
                         **({k: out.get(k) for k in ("rounds", "relabel_crf", "relabel_weight", "round_final_losses",
                                                      "rounds_seconds")}
                            if semi["rounds"] > 1 else {})},
            **({"earlier_rounds": earlier} if earlier else {}),
            "source": str(args.source), "source_id": planned["source_id"], **host()}


def plot(rows: list[dict], path: Path) -> Path:
    """val mIoU against masks, one line per method and --set variant (mean over seeds, bars: min to max)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in rows if not r.get("limit")]
    rows = full or rows   # quick checks (--limit) are drawn only when there is nothing else
    fig, ax = plt.subplots(figsize=(10, 4.5))
    variants = sorted({(METHODS.index(r["method"]), variant(r)) for r in rows})
    colours = plt.get_cmap("tab20").colors   # 20 distinct: the default 10-colour cycle repeats across variants
    for n, (index, settings) in enumerate(variants):
        method = METHODS[index]
        by_masks: dict[int, list[float]] = {}
        for r in rows:
            if r["method"] == method and variant(r) == settings and r.get("val_miou") is not None:
                by_masks.setdefault(r["masks"], []).append(r["val_miou"])
        if not by_masks:
            continue
        label = f"{method} ({', '.join(o.removeprefix('semi.') for o in settings)})"
        xs = sorted(by_masks)
        means = [sum(by_masks[x]) / len(by_masks[x]) for x in xs]
        lo = [m - min(by_masks[x]) for m, x in zip(means, xs)]
        hi = [max(by_masks[x]) - m for m, x in zip(means, xs)]
        ax.errorbar(xs, means, yerr=[lo, hi], marker="osDv^P"[index % 6], capsize=3, label=label,
                    color=colours[n % len(colours)])
    ax.axhline(WEAK, color="grey", linestyle="--", label=f"weak default (0 masks) {WEAK}")
    ax.axhline(REFERENCE, color="black", linestyle="--", label=f"reference (330 masks) {REFERENCE}")
    ax.plot([33], [TARGET], marker="*", markersize=12, color="red", linestyle="none", label=f"target at 33: {TARGET}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks([0, 10, 33, 100, 330], ["0", "10", "33", "100", "330"])
    ax.set_xlim(-1, 450)
    ax.set_xlabel("training images with a ground-truth mask (voc2012-mini train: 330)")
    ax.set_ylabel("val mIoU (%), no CRF")
    ax.set_title("How many masks does a user need? (semi-supervised, train_semi)", loc="left")   # centred, it overran the figure
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside: points sit everywhere
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_to_mlflow(png: Path, jsonl: Path) -> None:
    """The plot and the raw rows in one MLflow run of the project experiment, tagged semi-supervised."""
    sys.path.insert(0, str(REPO))
    from wsss.tracking import runs
    try:
        client = runs.client()
        run = client.create_run(runs.experiment_id(client), run_name="few_masks benchmark",
                                tags={"kind": "benchmark", "supervision": "semi"})
        client.log_artifact(run.info.run_id, str(png), "charts")
        if jsonl.is_file():
            client.log_artifact(run.info.run_id, str(jsonl), "results")
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception as exc:   # the figure is on disk either way
        print(f"warning: MLflow logging failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=int, nargs="*", default=[0, 10, 33, 100, 330])
    ap.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--epochs", type=int, default=0, help="semi.epochs (0: segmenter.epochs)")
    ap.add_argument("--limit", type=int, default=0, help="first N train and N val images only (a quick check)")
    ap.add_argument("--set", action="append", default=[], help="more params overrides, key=value")
    ap.add_argument("--source", default=str(SOURCE))
    ap.add_argument("--scratch", default="benchmarks/work/few_masks")
    ap.add_argument("--out", default=str(RESULTS / "few_masks.jsonl"))
    ap.add_argument("--plot", default=str(RESULTS / "few_masks.png"))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--no-train-score", action="store_true", help="skip scoring the unmasked train images")
    ap.add_argument("--rescore", action="store_true", help="only add train_miou to rows that lack it (see rescore)")
    args = ap.parse_args()
    if args.rescore:
        return rescore(args, Path(args.out))
    out = Path(args.out)
    # the stage runs land in the project's MLflow store (tagged supervision: semi), not the scratch folders'
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    if not args.plot_only:
        args.source_id = source_id(Path(args.source))   # only runs need it: --plot-only reads no source
        if Path(args.scratch).resolve().is_relative_to(Path(args.source).resolve()):
            sys.exit(f"--scratch {args.scratch} lies inside --source {args.source}: the source is only read")
        done = {key(r) for r in read_rows(out)}
        for masks in args.masks:
            for method in args.methods:
                for seed in args.seeds:
                    planned = probe(args, masks, method, seed)
                    if key(planned) in done:
                        print(f"have masks={masks} {method} seed {seed}: skipped")
                        continue
                    row = run_row(args, planned)
                    if row is None:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps({k: row[k] for k in ("masks", "method", "seed", "val_miou", "wall_s")}))
    png = plot(read_rows(out), Path(args.plot))
    log_to_mlflow(png, out)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
