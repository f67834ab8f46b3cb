"""Image search and the near-duplicate (train/val leak) report on the classifier's features.

    python -m wsss.commands search QUERY [--k 8] [--split train] [--out PNG]
    python -m wsss.commands near-duplicates [--threshold T] [--within] [--out-dir DIR]

QUERY is an image file or an id of the manifest. Both commands describe every manifest image once
(wsss/retrieval/index.py: search.method of params.yaml, SBA by default) and keep the packed index at
search.index, rebuilt when the classifier, the manifest or the settings change.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.config import paths
from wsss.retrieval import descriptors as D
from wsss.retrieval import index as retrieval_index
from wsss.retrieval import neighbours, sheets
from wsss.stores.atomic import atomic_path, write_json, write_text

SEARCH_DIR = paths.REPORTS / "search"
DUPLICATES_DIR = paths.REPORTS / "near_duplicates"


class QueryError(ValueError):
    """A query that is neither a readable image nor an indexed id; the message names it."""


@dataclass
class Context:
    index: retrieval_index.Index
    model: object
    device: object
    train_split: str
    val_split: str


def open_index(params: Path, manifest: Path, checkpoint: Path, index_path: Path | None, rebuild: bool,
               log=print) -> Context:
    """The descriptor index of the manifest's images (built on first use) and the network."""
    from wsss.config.params import load
    from wsss.training.runtime import resolve_device

    loaded = load(params)
    section = loaded["search"]
    device = resolve_device(section["device"])
    settings = D.Settings.from_section(section)
    index, model = retrieval_index.ensure(index_path or Path(section["index"]), manifest, section["network"],
                                          checkpoint, settings, device, rebuild=rebuild, log=log)
    data = loaded["data"]
    return Context(index, model, device, data["train_split"], data["val_split"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "query"


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def check_query(query: str) -> None:
    """Fail before any indexing on a query that names a file (a path or an image suffix) that is
    missing or unreadable; a bare name may still be an id of the manifest."""
    path = Path(query)
    if path.is_file():
        D.read_image(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES or len(path.parts) > 1:
        raise QueryError(f"query {query}: no such image file" + (" (a folder)" if path.is_dir() else ""))


def resolve_query(query: str, index: retrieval_index.Index) -> tuple[object, int | None, str]:
    """(image source, its row in the index or None, a display name). An existing file wins over an
    id of the same name."""
    path = Path(query)
    if path.is_file():
        D.read_image(path)   # unreadable -> ImageError naming the file, before any work
        return path, None, path.name
    row = index.position(query)
    if row is not None:
        return (lambda: index.image(row)), row, query
    if path.exists():
        raise QueryError(f"query {query}: not a file")
    raise QueryError(f"query {query!r}: no such image file, and no image of that id among the {len(index)} "
                     f"indexed images (ids like {index.ids[0]!r})")


def search(query: str, k: int, split: str | None, out: Path | None, ctx: Context) -> dict:
    """The k images of `split` (None: every split) most similar to the query, and their contact sheet."""
    index = ctx.index
    source, row, name = resolve_query(query, index)
    vector = index.descriptors[row] if row is not None else index.describe(ctx.model, [source], ctx.device)[0]
    candidates = None if split is None else np.array([s == split for s in index.splits])
    if candidates is not None and not candidates.any():
        raise QueryError(f"no indexed image is in split {split!r} (splits: {sorted(set(index.splits))})")
    found = neighbours.search(index.descriptors, vector, k, candidates, exclude=row)
    results = [{"rank": n, "id": index.ids[i], "split": index.splits[i], "score": round(s, 4),
                "tags": index.tag_names(i)} for n, (i, s) in enumerate(found, 1)]
    query_image = D.load_source(source)
    tiles = [(f"{r['rank']}. {r['id']}  {r['score']:.3f}", index.image(i)) for (i, _), r in zip(found, results)]
    sheet = sheets.search_sheet((f"query: {name}", query_image), tiles)
    out = Path(out) if out else SEARCH_DIR / f"{_slug(Path(name).stem if row is None else name)}.png"
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    where = f"{index.splits[row]}; {', '.join(index.tag_names(row))}" if row is not None else None
    return {"query": name, "indexed": row is not None, "query_split_tags": where, "results": results, "sheet": str(out)}


def format_results(found: dict) -> str:
    lines = [f"query: {found['query']}" + (f" ({found['query_split_tags']})" if found["indexed"] else " (not in the index)"),
             f"{'rank':>4}  {'id':<24} {'score':>6}  tags"]
    for r in found["results"]:
        lines.append(f"{r['rank']:>4}  {r['id']:<24} {r['score']:>6.3f}  {', '.join(r['tags'])}")
    lines.append(f"contact sheet -> {found['sheet']}")
    return "\n".join(lines)


def near_duplicates(threshold: float, within: bool, out_dir: Path, top: int, ctx: Context) -> dict:
    """Pairs at or above `threshold` between the train and val splits (and inside each: within),
    as pairs.csv and pairs.json, the top pairs' contact sheet and the score distribution."""
    index = ctx.index
    x = index.duplicate_descriptors
    pairs = neighbours.near_duplicates(x, index.ids, index.splits, threshold, ctx.train_split, ctx.val_split, within)
    best = neighbours.best_match_scores(x, index.splits, ctx.train_split, ctx.val_split)
    percentiles = {f"p{q}": round(float(np.percentile(best, q)), 4) for q in (50, 90, 99)} if len(best) else {}
    report = {"threshold": threshold, "within_splits": within, "method": index.settings.method,
              "whiten_dim": index.settings.duplicate_whiten_dim,
              "network": index.key.get("network"), "n_images": len(index),
              "splits": {s: index.splits.count(s) for s in sorted(set(index.splits))},
              "n_pairs": len(pairs),
              # each val image's best score against train: pick the threshold above this bulk
              "best_val_to_train": {**percentiles, "max": round(float(best.max()), 4) if len(best) else None,
                                    "histogram": _histogram(best)},
              "pairs": pairs}
    out_dir = Path(out_dir)
    write_json(report, out_dir / "pairs.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["a", "split_a", "b", "split_b", "score"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(pairs)
    write_text(buffer.getvalue(), out_dir / "pairs.csv")
    sheet_path = out_dir / "top_pairs.png"
    if pairs:
        position = {image_id: i for i, image_id in enumerate(index.ids)}
        sheet = sheets.pairs_sheet(pairs[:top], lambda image_id: index.image(position[image_id]))
        with atomic_path(sheet_path) as tmp:
            sheet.save(tmp, format="PNG")
    else:
        sheet_path.unlink(missing_ok=True)   # no stale sheet of an earlier threshold
    return {**report, "out_dir": str(out_dir), "sheet": str(sheet_path) if pairs else None}


def _histogram(scores: np.ndarray, bins: int = 20) -> dict:
    if not len(scores):
        return {}
    counts, edges = np.histogram(scores, bins=bins, range=(min(0.0, float(scores.min())), 1.0))
    return {"edges": [round(float(e), 3) for e in edges], "counts": counts.tolist()}


def format_duplicates(report: dict, show: int = 10) -> str:
    dist = report["best_val_to_train"]
    lines = [f"{report['n_pairs']} pairs with cosine >= {report['threshold']} "
             f"({report['method']} on {report['n_images']} images; within splits: {report['within_splits']})",
             f"each val image's best match in train: median {dist.get('p50')}, p90 {dist.get('p90')}, "
             f"p99 {dist.get('p99')}, max {dist.get('max')}"]
    for p in report["pairs"][:show]:
        lines.append(f"  {p['score']:.3f}  {p['split_a']} {p['a']}  ~  {p['split_b']} {p['b']}")
    if report["n_pairs"] > show:
        lines.append(f"  ... {report['n_pairs'] - show} more")
    lines.append(f"-> {report['out_dir']}/pairs.csv, pairs.json" + (f", {report['sheet']}" if report["sheet"] else ""))
    return "\n".join(lines)
