"""Stage 3: localization-map refinement learning (DRS paper, section 3.3).

A second network learns to reproduce the exported maps from the image alone: the target for each
pixel is the map value of its argmax class, other channels zero (MSE). Because it must explain the
maps from appearance, it fills holes and drops isolated noise. `refiner.head` picks the network:
`aspp` (the segmenter's DeepLab head: dilated context per pixel) or `cam` (a 1x1 conv on the
backbone's features, like the classifier). On voc2012-mini the 1x1 version only learned to
predict near-zero maps (refined 31.27 vs raw 38.24 mIoU); the ASPP head learns the shapes (43.22).
Core: `refinement_target` and `refinement_loss`; `main` trains and saves artifacts/refiner.pt.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.classifier import build_localizer
from tasks import data, images, mapstore, paths, tracking, trainer
from tasks.io import write_json, write_text
from tasks.runtime import resolve_device, save_checkpoint, seed_everything, training_loader


def refinement_target(maps: np.ndarray, classes: list[int], n_fg: int) -> np.ndarray:
    """k x H x W maps of the tagged classes -> n_fg x H x W: each pixel keeps only its argmax class."""
    h, w = maps.shape[1:]
    target = np.zeros((n_fg, h, w), maps.dtype)
    if len(classes) == 0:
        return target
    winner = maps.argmax(0)
    peak = np.take_along_axis(maps, winner[None], 0)[0]
    for j, c in enumerate(classes):
        target[c - 1] = np.where(winner == j, peak, 0)
    return target


class MapTargets(Dataset):
    """Augmented (image, target) crops; image and target share one resize, flip and crop."""

    def __init__(self, root, records: list[tuple], n_fg: int, crop: int, resize_long: tuple[int, int], seed: int):
        self.root, self.records, self.n_fg, self.crop, self.resize = root, records, n_fg, crop, resize_long
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        image_id, classes, maps_u8 = self.records[i]
        image = images.resize_long(data.load_image(self.root, image_id), images.random_long_side(self.rng, self.resize))
        h, w = image.shape[:2]
        maps = F.interpolate(torch.from_numpy(maps_u8.astype(np.float32) / 255)[None], size=(h, w),
                             mode="bilinear", align_corners=False)[0].numpy()
        target = refinement_target(maps, classes, self.n_fg).transpose(1, 2, 0)
        image, target = images.flip_and_crop(self.rng, self.crop, image, (target, 0.0))
        return images.to_tensor(image), torch.from_numpy(target.transpose(2, 0, 1).copy())


def refinement_loss(model, batch):
    x, target = batch
    _, maps = model(x)
    return F.mse_loss(images.upsample(maps, target.shape[-2:]), target)


def main(params: dict) -> dict:
    cfg = params["refiner"]
    seed_everything(cfg["seed"])
    device = resolve_device(cfg["device"])
    manifest, classes, root = data.read_manifest(paths.MANIFEST)
    records = list(mapstore.read(paths.MAPS, as_uint8=True))
    n_fg = len(classes) - 1
    model_cfg = {**cfg, "drs": {"mode": "none", "delta": 1.0, "placement": []}}
    model = build_localizer(model_cfg, n_fg)
    loader = training_loader(
        MapTargets(root, records, n_fg, cfg["crop_size"], tuple(cfg["resize_long"]), cfg["seed"]), cfg)
    start = time.perf_counter()
    history = trainer.fit(model, loader, cfg, device, refinement_loss, "train refiner")
    save_checkpoint(paths.REFINER, model, {"classifier": model_cfg, "classes": classes})
    metrics = {"train_seconds": round(time.perf_counter() - start, 1), "epochs": cfg["epochs"],
               "n_train": len(records), "final_loss": round(history[-1]["loss"], 6), "device": str(device)}
    write_json(metrics, paths.METRICS / "refiner.json")
    write_text(trainer.history_csv(history), paths.PLOTS / "refiner_train.csv")
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics
