"""Stage 5: the DeepLab-style segmenter trained on the pseudo labels (255 ignored), scored on val.

The same `segmentation.train` / `evaluate` serve the ground-truth reference (train_reference.py).
"""
from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from tasks import data, labelstore, paths, segmentation, tracking, trainer
from tasks.io import atomic_path, write_json, write_text
from tasks.metrics import per_class_csv, summary
from tasks.runtime import load_checkpoint, resolve_device, resolve_precision, save_checkpoint, seed_everything


def train_and_score(params: dict, labels_for, name: str, checkpoint: Path, crf: bool = True) -> dict:
    """Train on the train split with `labels_for(id)`, save, score on val without CRF
    post-processing and, if crf, with it too; writes metrics/<name>.json.

    segmenter.init: refiner starts from the refiner's weights (artifacts/refiner.pt).
    """
    cfg = params["segmenter"]
    warm = None
    if cfg["init"] == "refiner":
        warm = (load_checkpoint(paths.REFINER)["state_dict"], str(paths.REFINER))
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = data.read_manifest(paths.MANIFEST)
    train_ids = [r["id"] for r in data.split_rows(manifest, params["data"]["train_split"])]
    start = time.perf_counter()
    model, history = segmentation.train(cfg, root, train_ids, labels_for, len(classes), device, f"train {name}",
                                          warm)
    train_seconds = time.perf_counter() - start
    save_checkpoint(checkpoint, model, segmentation.checkpoint_config(cfg, classes))
    write_text(trainer.history_csv(history), paths.PLOTS / f"{name}_train.csv")

    val_rows = data.split_rows(manifest, params["data"]["val_split"])
    start = time.perf_counter()
    plain, with_crf, panels = segmentation.evaluate(model, root, val_rows, len(classes), cfg, device, samples=4,
                                                    crf=crf)
    metrics = {"train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1),
               "epochs": cfg["epochs"], "init": cfg["init"], "n_train": len(train_ids),
               "precision": resolve_precision(device, cfg["precision"]),
               "final_loss": round(history[-1]["loss"], 5)}
    if plain.sum():
        s = summary(plain, classes)
        metrics.update({"val_miou": s["miou"], "per_class_iou": s["per_class_iou"], "classes": classes,
                        "confusion_matrix": plain.tolist()})
        if with_crf is not None:
            s_crf = summary(with_crf, classes)
            metrics.update({"val_miou_crf": s_crf["miou"], "per_class_iou_crf": s_crf["per_class_iou"]})
    with atomic_path(paths.REPORTS / name) as tmp:
        tmp.mkdir()
        Image.fromarray(segmentation.confusion_image(plain)).save(tmp / "confusion_matrix.png")
        for image_id, panel in panels:  # image | prediction | with CRF (if scored) | ground truth
            Image.fromarray(panel).save(tmp / f"val_{image_id}.png")
    write_json(metrics, paths.METRICS / f"{name}.json")
    write_text(per_class_csv(metrics.get("per_class_iou", {})), paths.PLOTS / f"{name}_per_class.csv")
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracking.log_artifact(paths.REPORTS / name, name)
    return metrics


def main(params: dict) -> dict:
    labels = labelstore.read_dict(paths.PSEUDO_LABELS)

    def labels_for(image_id: str):
        if image_id not in labels:
            raise data.DataError(f"image {image_id!r} has no pseudo label in {paths.PSEUDO_LABELS}")
        return labels[image_id]

    return train_and_score(params, labels_for, "segmentation", paths.SEGMENTER)
