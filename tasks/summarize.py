"""Stage 6: one table of every stage's mIoU and wall time (metrics/summary.json, metrics/results.md)."""
from __future__ import annotations

import json

from wsss.config import paths
from wsss.stores.atomic import write_text
from wsss.tracking.outputs import write_stage_outputs

ROWS = [  # (metrics file, label, mIoU key, seconds keys)
    ("pretrain", "self-supervised backbone pretraining", None, ("train_seconds",)),
    ("classifier", "classifier (val mAP)", "val_map", ("train_seconds",)),
    ("maps", "localization maps (train)", "miou", ("seconds",)),
    ("refiner", "refiner training", None, ("train_seconds",)),
    ("refined_maps", "refined maps (train)", "miou", ("seconds",)),
    ("pseudo_labels", "CRF pseudo labels (train)", "miou", ("seconds",)),
    ("segmentation", "segmenter on pseudo labels (val)", "val_miou", ("train_seconds", "eval_seconds")),
    ("segmentation", "  + CRF post-processing (val)", "val_miou_crf", ()),
    ("reference", "same segmenter on ground truth (val)", "val_miou", ("train_seconds", "eval_seconds")),
]




def rows(rounds=()) -> list[tuple]:
    """ROWS with each label round's three rows (params.yaml `rounds` keys, in order) before the last labels."""
    at = next(i for i, r in enumerate(ROWS) if r[0] == "pseudo_labels")
    extra = [row for k in rounds for row in (
        (f"rounds/{k}/pseudo_labels", f"round {k} labels (train)", "miou", ("seconds",)),
        (f"rounds/{k}/segmentation", f"round {k} segmenter (val, 1 scale)", "val_miou", ("train_seconds", "eval_seconds")),
        (f"rounds/{k}/maps", f"round {k} segmenter maps (train)", "mined_miou", ("seconds",)))]
    return ROWS[:at] + extra + ROWS[at:]


def _load(name: str) -> dict:
    path = paths.METRICS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summarize(metrics: dict[str, dict], rounds=()) -> dict:
    table, total = [], 0.0
    for name, label, key, seconds_keys in rows(rounds):
        m = metrics.get(name, {})
        seconds = sum(m.get(k, 0) or 0 for k in seconds_keys)
        total += seconds
        table.append({"stage": label, "miou": m.get(key) if key else None, "seconds": round(seconds, 1)})
    weak = metrics.get("segmentation", {}).get("val_miou")
    full = metrics.get("reference", {}).get("val_miou")
    ratio = round(weak / full, 3) if weak is not None and full else None
    return {"table": table, "weak_to_full_ratio": ratio, "total_seconds": round(total, 1)}


def markdown(summary: dict, params: dict) -> str:
    lines = [f"Dataset: `{params['data']['root']}`; DRS: {params['classifier']['drs']['mode']} "
             f"(delta {params['classifier']['drs']['delta']}, {params['classifier']['drs']['placement']}), "
             f"backbone {params['classifier']['backbone']}.", "",
             "| stage | mIoU (mAP for the classifier) | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {'-' if r['miou'] is None else r['miou']} | {r['seconds']} |" for r in summary["table"]]
    lines += ["", f"Weak-to-full ratio: {summary['weak_to_full_ratio']}; stage time in total: {summary['total_seconds']} s."]
    return "\n".join(lines) + "\n"


def main(params: dict) -> dict:
    names = {name for name, *_ in rows(params["rounds"])}
    summary = summarize({n: _load(n) for n in names}, params["rounds"])
    write_text(markdown(summary, params), paths.METRICS / "results.md")
    write_stage_outputs("summary", summary)
    return {"weak_to_full_ratio": summary["weak_to_full_ratio"], "total_seconds": summary["total_seconds"]}
