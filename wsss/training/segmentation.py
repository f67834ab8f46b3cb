"""What the segmentation stages share: labelled crops, training, evaluation with and without CRF.

The weak model (pseudo labels) and the reference (ground-truth masks) differ only in where the
labels come from, so both call `train` and `evaluate` with their own label source.
"""
from __future__ import annotations

import functools
import inspect
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from wsss.config import paths
from wsss.dataset import images, voc
from wsss.dataset.crops import TrainingCrops
from wsss.labelling.crf import crf_labels
from models.networks import to_config
from models.registry import LOSSES
from models.segmenter import build_segmenter
from wsss.pretraining import backbone as pretrained_backbone
from wsss.scaleout.engine import LOCAL, EngineError, open_engine, progress
from wsss.scoring.metrics import IGNORE, confusion, per_class_csv, summary
from wsss.stores.atomic import atomic_path
from wsss.tracking import charts, panels
from wsss.tracking.outputs import write_stage_outputs
from wsss.training import checkpoints, distributed, trainer
from wsss.training.checkpoints import CheckpointRef
from wsss.training.inference import sum_over_views
from wsss.training.runtime import autocast, resolve_device, resolve_precision, seed_everything, training_loader


class LabelTarget:
    """A label map per image (pseudo labels or masks, 255 = ignore) for `wsss.dataset.crops.TrainingCrops`:
    resized nearest with the image, then flipped and cropped with it (padding is 255)."""

    dense, fill = True, IGNORE

    def __init__(self, labels: Callable[[str], np.ndarray]):
        self.labels = labels

    def load(self, image_id: str, source_hw, size_hw) -> np.ndarray:
        labels = self.labels(image_id)
        if labels.shape != tuple(source_hw):
            raise voc.DataError(f"labels for image {image_id!r}: size {labels.shape} differs from {tuple(source_hw)}")
        return np.asarray(Image.fromarray(labels).resize(tuple(size_hw)[::-1], Image.NEAREST))

    def to_tensor(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels.astype(np.int64))


def loss_grid(logits: torch.Tensor, labels: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels on the grid the loss is taken on: every `stride`-th pixel of the labels
    (the centre of each stride x stride cell; nearest, so 255 stays 255) and the logits resized to
    it. At stride 1 the full-size loss; at 4 it costs 0.005 s instead of 0.10-0.13 s a step."""
    labels = images.grid_labels(labels, stride)
    # contiguous first: softmax over channels of a channels-last 21 x 256 x 256 batch is 25% slower
    return images.upsample(logits.float().contiguous(), tuple(labels.shape[-2:])), labels


def loss_options(loss: Callable, cfg: dict) -> dict:
    """A loss's own settings: its keyword argument `x` reads segmenter.loss_x where the section has
    it (small_loss_ce: drop = loss_drop; locally_adaptive: windows = loss_windows)."""
    names = inspect.signature(loss).parameters
    return {name: cfg[f"loss_{name}"] for name in names if f"loss_{name}" in cfg and name != "ignore_index"}


def logits_and_aux(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits and, for a head that has them (ocr: its soft object regions), auxiliary logits."""
    return model.logits_and_aux(x) if hasattr(model, "logits_and_aux") else (model.logits(x), None)


def label_loss(cfg: dict) -> Callable:
    """value(logits, aux, labels): cfg["loss"] from the LOSSES registry with its own settings, 255
    ignored, taken every cfg["loss_stride"] pixels, plus cfg["aux_weight"] x the same loss of the
    auxiliary logits (None: none) against the same labels. Every segmenter-side trainer uses it
    (train_segmenter, train_reference, wsss/semi/), so a head or loss option works in all of them."""
    loss = LOSSES.get(cfg.get("loss", "cross_entropy"), "segmenter.loss")
    options, stride, aux_weight = loss_options(loss, cfg), cfg["loss_stride"], cfg.get("aux_weight", 0.4)

    def value(out: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        logits, grid = loss_grid(out, labels, stride)
        total = loss(logits, grid.contiguous(), ignore_index=IGNORE, **options)
        if aux is not None and aux_weight > 0:
            total = total + aux_weight * loss(loss_grid(aux, labels, stride)[0], grid.contiguous(),
                                              ignore_index=IGNORE, **options)
        return total
    return value


def segmentation_loss(cfg: dict) -> Callable:
    """batch_loss(model, batch) for the trainer: label_loss of the model's logits (and auxiliary logits)."""
    value = label_loss(cfg)

    def batch_loss(model, batch):
        x, labels = batch
        return value(*logits_and_aux(model, x), labels)
    return batch_loss


def warm_start(model, state: dict, source: str) -> None:
    """Copy a localizer's weights (the refiner: same backbone and ASPP head) into a segmenter.

    The localizer has one output per foreground class; they become outputs 1.. and the background
    output keeps its fresh initialisation. A decoder head (aspp_plus) keeps its decoder fresh; the
    ocr heads have no ASPP, so they keep the whole head fresh and take the backbone only. A key
    with another shape means the two configs differ.
    """
    own = model.state_dict()
    fresh = tuple(f"head.{name}." for name in getattr(model.head, "decoder", ()))
    for key in ("head.classifier.weight", "head.classifier.bias"):
        if key in state and key in own and state[key].shape == (own[key].shape[0] - 1, *own[key].shape[1:]):
            fg = own[key].clone()
            fg[1:] = state[key]
            state = {**state, key: fg}
    state = {**{k: v for k, v in state.items() if not k.startswith(fresh)},
             **{k: v for k, v in own.items() if k.startswith(fresh)}}
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise ValueError(f"segmenter.init: {source} does not fit the segmenter (missing {missing[:3]}, "
                         f"other shape {wrong[:3]}): refiner and segmenter need the same backbone, "
                         f"head, aspp_channels and number of aspp_rates")
    model.load_state_dict({k: state[k] for k in own})


def initial_segmenter(cfg: dict, n_classes: int, start: tuple[dict, str] | None = None,
                      backbone_from: str | Path | None = None):
    """The untrained segmenter: ImageNet backbone (as cfg's `pretrained` says); start: (state_dict,
    where it came from) to warm-start from (the refiner); backbone_from: the pretrain stage's
    self-supervised backbone (wsss/pretraining/backbone.py), the head starting fresh."""
    model = build_segmenter({**cfg, "pretrained": cfg["pretrained"] and backbone_from is None}, n_classes)
    if start is not None:
        warm_start(model, *start)
    if backbone_from is not None:
        pretrained_backbone.load_into(model.backbone, cfg["backbone"], backbone_from, "segmenter.init")
    return model


def train(cfg: dict, root, ids: list[str], labels: Callable, n_classes: int, device, desc: str,
          start: tuple[dict, str] | None = None, backbone_from: str | Path | None = None):
    """(model, history, batch figures: distributed.batch_metrics); start, backbone_from: where the
    weights start (initial_segmenter)."""
    model = initial_segmenter(cfg, n_classes, start, backbone_from)
    loader = training_loader(
        TrainingCrops(root, ids, LabelTarget(labels), cfg["crop_size"], cfg["resize_long"], cfg["seed"]), cfg)
    history = trainer.fit(model, loader, cfg, device, segmentation_loss(cfg), desc)
    return model, history, distributed.batch_metrics(loader)


@torch.no_grad()
def predict_probs(model, image: np.ndarray, device, flip: bool, scales=(1.0,), precision: str = "fp32") -> np.ndarray:
    """Softmax class probabilities (C x H x W) for one image at its own size: logits averaged over
    the input scales (and horizontal flips), each resized back to the image."""
    model.eval()
    with autocast(device, precision):
        total = sum_over_views(model, image, scales, flip, device)
    mean = total / (len(scales) * (2 if flip else 1))  # a mean, not a sum: the CRF reads these as confidences
    return torch.softmax(mean, 0).cpu().numpy()


@dataclass
class EvalChunk:
    """Val images `first`.. of the scored rows: predictions (and their CRF) of `rows`, scored."""
    first: int
    rows: list[dict]
    root: str
    n_classes: int
    cfg: dict                     # segmenter
    network: CheckpointRef
    samples: int                  # panels of the first `samples` images overall
    crf: bool


def evaluate_chunk(task: EvalChunk, imap) -> dict:
    """Confusions without and with CRF of one chunk, and its share of the samples. The network
    runs here, lazily, while the engine's `imap` runs the CRFs (a pool here; inline on a worker)."""
    model, _, device = task.network.get()
    cfg, n = task.cfg, task.n_classes
    plain = np.zeros((n, n), np.int64)
    refined = np.zeros_like(plain) if task.crf else None
    side, samples = deque(), []

    def predicted():
        for row in task.rows:
            image = voc.load_image(task.root, row["id"])
            probs = predict_probs(model, image, device, cfg["val_flip"], cfg["val_scales"], cfg["precision"])
            side.append((row["id"], image, voc.load_mask(task.root, row["id"], n), probs.argmax(0).astype(np.uint8)))
            yield image, probs, cfg["crf"]

    crfs = imap(crf_labels, predicted()) if task.crf else (None for _ in predicted())
    for k, pred_crf in enumerate(progress(crfs, len(task.rows), "evaluate val")):
        image_id, image, mask, pred = side.popleft()
        plain += confusion(mask, pred, n)
        predictions = [("prediction", pred)]
        if pred_crf is not None:
            refined += confusion(mask, pred_crf, n)
            predictions.append(("prediction + CRF", pred_crf))
        if task.first + k < task.samples:
            samples.append((image_id, image, predictions, mask))
    return {"plain": plain, "refined": refined, "samples": samples}


def evaluate(model, root, rows: list[dict], n_classes: int, cfg: dict, device, samples: int = 0, workers: int = 0,
             crf: bool = True, scaleout: dict | None = None):
    """(confusion without CRF, confusion with CRF or None, samples) over rows that have masks; a
    sample is (id, image, [(title, predicted labels)], mask), for wsss.tracking.panels.labels_panel.

    model: a network, or a CheckpointRef (needed for scaleout engine dask: the workers load it).
    Engine local (default): the network runs here; the CRF of each image (single-threaded, and on
    CPU most of the time) runs in a pool of `workers` processes (0: all cores), at most two images
    per worker in flight so memory stays flat. crf=False skips it (about half the evaluation time
    on 2 cores). Engine dask: chunks of scaleout.chunk_size images, one per worker at a time.
    """
    scaleout = scaleout or LOCAL
    network = model if isinstance(model, CheckpointRef) else CheckpointRef("", str(device), (model, None, device))
    if scaleout["engine"] == "dask" and not network.path:
        raise EngineError("evaluate: scaleout engine dask needs the network as a checkpoint (CheckpointRef)")
    plain = np.zeros((n_classes, n_classes), np.int64)
    refined = np.zeros_like(plain) if crf else None
    samples_out = []
    rows = [r for r in rows if r["has_mask"]]
    gpu = torch.device(device).type == "cuda"
    with open_engine(scaleout, workers=workers, gpu=gpu) as engine:
        tasks = [EvalChunk(first, chunk, str(Path(root).resolve()), n_classes, cfg, network, samples, crf)
                 for first, chunk in engine.split(rows)]
        for part in engine.run(evaluate_chunk, tasks, "evaluate val", gpu=gpu):
            plain += part["plain"]
            if crf:
                refined += part["refined"]
            samples_out += part["samples"]
    return plain, refined, samples_out


def train_and_score(params: dict, labels_for: Callable[[str], np.ndarray], name: str, checkpoint: Path,
                    crf: bool = True, fit: Callable | None = None) -> dict:
    """The segmentation stages' body: train on the train split with `labels_for(id)`, save, score on
    val without CRF post-processing and, if crf, with it too; writes metrics/<name>.json,
    plots/<name>_*.csv and reports/<name>/ (confusion matrix chart, sample panels).

    segmenter.init: refiner starts from the refiner's weights (artifacts/refiner.pt); pretrain from the
    pretrain stage's self-supervised backbone (artifacts/pretrain/backbone.pt).
    fit: how to train, called like `train` (default) and returning the same (model, history,
    figures); its figures join the metrics. A model with `network_kind` / `network_settings()`
    (models/ensemble.py) is saved as that kind of network.
    """
    cfg = params["segmenter"]
    warm = None
    if cfg["init"] == "refiner":
        refiner = checkpoints.read(paths.REFINER)
        if refiner["config"]["kind"] != "localizer":
            raise ValueError(f"segmenter.init: refiner needs a map-regression refiner; {paths.REFINER} is an "
                             f"{refiner['config']['kind']} network (refiner.method random_walk): use segmenter.init=imagenet")
        warm = (refiner["state_dict"], str(paths.REFINER))
    backbone_from = paths.PRETRAIN_BACKBONE if cfg["init"] == "pretrain" else None
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = voc.read_manifest(paths.MANIFEST)
    train_ids = [r["id"] for r in voc.split_rows(manifest, params["data"]["train_split"])]
    start = time.perf_counter()
    if fit is not None and backbone_from is not None:
        raise ValueError(f"segmenter.init: pretrain is not supported by {name} (its own training starts "
                         "from ImageNet or the refiner)")
    model, history, batch = (fit or functools.partial(train, backbone_from=backbone_from))(
        cfg, root, train_ids, labels_for, len(classes), device, f"train {name}", warm)
    train_seconds = time.perf_counter() - start
    settings = model.network_settings() if hasattr(model, "network_settings") else {}
    checkpoints.save(checkpoint, model, to_config(getattr(model, "network_kind", "segmenter"), {**cfg, **settings}, classes))

    val_rows = voc.split_rows(manifest, params["data"]["val_split"])
    start = time.perf_counter()
    # the saved checkpoint: engine dask loads it on the workers; here the trained network is used as it is
    network = CheckpointRef(str(Path(checkpoint).resolve()), cfg["device"], (model, None, device))
    plain, with_crf, samples = evaluate(network, root, val_rows, len(classes), cfg, device, samples=4, crf=crf,
                                        scaleout=params["scaleout"])
    metrics = {"train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1),
               "epochs": cfg["epochs"], "init": cfg["init"], "n_train": len(train_ids),
               "precision": resolve_precision(device, cfg["precision"]),
               "final_loss": round(history[-1]["loss"], 5), **batch}
    if plain.sum():
        s = summary(plain, classes)
        metrics.update({"val_miou": s["miou"], "per_class_iou": s["per_class_iou"], "classes": classes,
                        "confusion_matrix": plain.tolist()})
        if with_crf is not None:
            s_crf = summary(with_crf, classes)
            metrics.update({"val_miou_crf": s_crf["miou"], "per_class_iou_crf": s_crf["per_class_iou"]})
    with atomic_path(paths.REPORTS / name) as tmp:
        tmp.mkdir()
        charts.confusion_matrix_chart(plain.tolist(), classes, tmp / "confusion_matrix.png", f"{name}: val confusion")
        for image_id, image, predictions, mask in samples:
            panels.labels_panel(image, predictions, mask, classes).save(tmp / f"val_{image_id}.png")
    return write_stage_outputs(name, metrics, plots={f"{name}_train.csv": trainer.history_csv(history),
                                                     f"{name}_per_class.csv": per_class_csv(metrics.get("per_class_iou", {}))},
                               reports={name: name})
