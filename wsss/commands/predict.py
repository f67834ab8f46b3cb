"""Segment a folder of new images with the trained segmenter: palette PNGs and overlays.

    python -m wsss.commands predict IN_DIR OUT_DIR [--checkpoint artifacts/segmenter.pt] [--crf] [--overwrite]

OUT_DIR gets labels/*.png (VOC palette), overlays/*.png, classes.txt and the manifest that
wsss/commands/outputs.py keeps; it is replaced whole, atomically, and only where that loses no one's files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.commands import outputs
from wsss.dataset import images
from wsss.labelling.crf import crf_argmax
from wsss.scaleout.engine import LOCAL, open_engine, progress
from wsss.stores.atomic import atomic_file, remove_partials
from wsss.stores.names import file_name
from wsss.training.checkpoints import CheckpointRef
from wsss.training.runtime import wants_gpu
from wsss.training.segmentation import predict_probs

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
COMMAND = "predict"


class ImageError(ValueError):
    """An input file that is not a readable image; the message names it."""


def input_images(in_dir: Path) -> list[Path]:
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} not found" if not in_dir.exists()
                                else f"input {in_dir} is not a folder")
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{in_dir}: no images ({', '.join(sorted(SUFFIXES))})")
    by_stem: dict[str, list[str]] = {}
    for path in files:   # outputs are named STEM.png: a.jpg and a.png would overwrite each other
        by_stem.setdefault(file_name(path.stem, in_dir), []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(names) for names in clashes)
        raise ImageError(f"{in_dir}: images whose predictions would overwrite each other (same name, "
                         f"other suffix): {listed}; rename them apart")
    return files


@dataclass
class PredictChunk:
    """Images `files` -> labels/ and overlays/ of the temporary output folder `out_dir`."""
    files: list[str]
    out_dir: str
    network: CheckpointRef
    use_crf: bool
    crf_cfg: dict | None
    precision: str


def predict_chunk(task: PredictChunk, imap=None) -> int:
    """Segment one chunk of images; each PNG is written under a temporary name, then renamed."""
    model, config, dev = task.network.get()
    cfg, out = config["network"], Path(task.out_dir)
    for path in progress(task.files, len(task.files), "predict"):
        path = Path(path)
        try:
            with Image.open(path) as img:
                image = np.array(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"{path}: not a readable image ({exc})") from None
        probs = predict_probs(model, image, dev, cfg["val_flip"], cfg.get("val_scales", [1.0]), task.precision)
        labels = (crf_argmax(image, probs, task.crf_cfg or cfg["crf"]) if task.use_crf
                  else probs.argmax(0).astype(np.uint8))
        with atomic_file(out / "labels" / f"{path.stem}.png") as tmp:
            images.palette_png(labels).save(tmp, format="PNG")
        with atomic_file(out / "overlays" / f"{path.stem}.png") as tmp:
            Image.fromarray(images.blend(image, images.colour_labels(labels), 0.55)).save(tmp, format="PNG")
    return len(task.files)


def predict_folder(in_dir: Path, out_dir: Path, checkpoint: Path, device: str = "auto", use_crf: bool = False,
                   crf_cfg: dict | None = None, precision: str = "auto", overwrite: bool = False,
                   scaleout: dict | None = None) -> int:
    """Like `device`, `precision` belongs to the machine that predicts, not to the checkpoint.
    scaleout: params.yaml's section (default: this process); engine dask predicts chunks of
    scaleout.chunk_size images on the cluster's workers, each loading the checkpoint once.

    Refuses (wsss.commands.outputs.OutputError) an OUT_DIR inside IN_DIR or holding files this command
    did not write, unless `overwrite`; the inputs and OUT_DIR are checked before the model loads.
    """
    files = input_images(in_dir)
    scaleout = scaleout or LOCAL
    network = CheckpointRef(str(Path(checkpoint).resolve()), device, kinds=("segmenter", "segmenter_ensemble"))
    with outputs.replacing(out_dir, COMMAND, [in_dir], overwrite) as tmp:
        if scaleout["engine"] == "local":   # dask: only the workers load the network
            network.get()
        classes = network.config()["classes"]
        (tmp / "labels").mkdir(parents=True)
        (tmp / "overlays").mkdir()
        gpu = wants_gpu(device)
        with open_engine(scaleout, gpu=gpu) as engine:
            tasks = [PredictChunk([str(f.resolve()) for f in chunk], str(tmp.resolve()), network, use_crf, crf_cfg,
                                  precision) for _, chunk in engine.split(files)]
            for _ in engine.run(predict_chunk, tasks, "predict", gpu=gpu):
                pass
        remove_partials(tmp)   # what a killed worker left under a temporary name
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
    return len(files)
