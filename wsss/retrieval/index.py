"""The descriptor index of a dataset: every manifest image's unit descriptor, packed in one .npz
with what is needed to describe a new query the same way (the selected detectors, the whitening),
and a key of what it was built from (the network's checkpoint digest, the manifest digest, the
settings) so a stale index is rebuilt rather than searched.

    index = ensure(path, manifest, network, checkpoint, settings, device)   # load, or build and save
    scores = index.descriptors @ index.describe(model, [query_path], device)[0]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from wsss.dataset import voc
from wsss.retrieval import descriptors as D
from wsss.stores.atomic import atomic_path, file_digest

FORMAT = 2
NETWORKS = ("classifier", "imagenet")


class IndexFileError(ValueError):
    """An index file that cannot be used; the message names it."""


@dataclass
class Index:
    ids: list[str]
    splits: list[str]
    tags: list[list[int]]
    classes: list[str]             # the manifest's, background first
    root: str                      # data.root the images were read from
    descriptors: np.ndarray        # N x d float32, unit rows (dot product = cosine similarity): search
    duplicate_descriptors: np.ndarray   # the same raw descriptors whitened for near-duplicate matching
    detectors: np.ndarray          # sba's selected channels (empty for the other methods)
    whitening: D.Whitening | None
    settings: D.Settings
    key: dict                      # what it was built from: network, checkpoint / manifest digests, settings

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, image_id: str) -> int | None:
        try:
            return self.ids.index(image_id)
        except ValueError:
            return None

    def image(self, i: int) -> np.ndarray:
        return voc.load_image(self.root, self.ids[i])

    def tag_names(self, i: int) -> list[str]:
        return [self.classes[t] for t in self.tags[i]]

    def describe(self, model: torch.nn.Module, sources: list, device: torch.device) -> np.ndarray:
        """Unit descriptors of new images, comparable with `descriptors` (the index's detectors and whitening)."""
        raw = D.extract(model, sources, self.settings, device, [self.settings.method], self.detectors,
                        desc="query")[self.settings.method]
        return D.finish(raw, self.whitening)

    def save(self, path: str | Path) -> None:
        w = self.whitening
        arrays = dict(
            ids=np.array(self.ids, dtype=str), splits=np.array(self.splits, dtype=str),
            tags=np.array([json.dumps(t) for t in self.tags], dtype=str),
            descriptors=self.descriptors.astype(np.float32), detectors=np.asarray(self.detectors, np.int64),
            duplicate_descriptors=self.duplicate_descriptors.astype(np.float32),
            whiten_mean=w.mean if w else np.zeros(0, np.float32),
            whiten_projection=w.projection if w else np.zeros((0, 0), np.float32),
            meta=np.array(json.dumps({"format": FORMAT, "classes": self.classes, "root": self.root,
                                      "settings": self.settings.to_dict(), "key": self.key})))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Index":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"descriptor index {path} not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise IndexFileError(f"descriptor index {path}: format {meta.get('format')}, expected {FORMAT}")
                mean, projection = z["whiten_mean"], z["whiten_projection"]
                return cls(ids=z["ids"].tolist(), splits=z["splits"].tolist(),
                           tags=[json.loads(t) for t in z["tags"].tolist()], classes=meta["classes"],
                           root=meta["root"], descriptors=z["descriptors"], detectors=z["detectors"],
                           duplicate_descriptors=z["duplicate_descriptors"],
                           whitening=D.Whitening(mean, projection) if mean.size else None,
                           settings=D.Settings(**meta["settings"]), key=meta["key"])
        except (OSError, ValueError, KeyError) as exc:
            if isinstance(exc, IndexFileError):
                raise
            raise IndexFileError(f"descriptor index {path} is unreadable ({type(exc).__name__}: {exc}); "
                              "delete it or pass --rebuild") from None


def load_network(network: str, checkpoint: str | Path | None, device: torch.device) -> torch.nn.Module:
    """classifier: the trained CAM classifier of `checkpoint`; imagenet: EfficientNet-Lite0 with its
    ImageNet weights and no training here (for a dataset without a trained classifier yet)."""
    if network == "classifier":
        from wsss.training import checkpoints

        model, config = checkpoints.load(checkpoint, device)
        if config["kind"] != "localizer":
            raise IndexFileError(f"checkpoint {checkpoint} holds a {config['kind']}, not the classifier "
                              "(search uses artifacts/classifier.pt)")
        D.feature_maps(model, torch.zeros(1, 3, 32, 32, device=device))  # fails clearly on a non-CAM localizer
        return model
    if network == "imagenet":
        from models.classifier import CAMClassifier

        return CAMClassifier(n_classes=1, backbone="efficientnet_lite0", pretrained=True, extra_convs=0).eval().to(device)
    raise ValueError(f"search.network: {network!r} is not one of {list(NETWORKS)}")


def build_key(manifest: str | Path, network: str, checkpoint: str | Path | None, settings: D.Settings) -> dict:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found: run the manifest stage first "
                                "(python -m tasks manifest)")
    key = {"network": network, "manifest_md5": file_digest(manifest), "settings": settings.to_dict()}
    if network == "classifier":
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found: train the classifier first "
                                    "(python -m tasks train_classifier), or set search.network: imagenet")
        key["checkpoint_md5"] = file_digest(checkpoint)
    return key


def build(manifest: str | Path, model: torch.nn.Module, settings: D.Settings, device: torch.device,
          key: dict | None = None) -> Index:
    """Describe every image of the manifest (all its splits)."""
    table, classes, root = voc.read_manifest(manifest)
    rows = table.to_pylist()
    if not rows:
        raise IndexFileError(f"manifest {manifest} lists no images")
    sources = [partial(voc.load_image, root, r["id"]) for r in rows]
    raw, detectors = D.raw_descriptors(model, sources, settings, device, desc="index")
    # two post-processings of one forward pass: search ranks by category-level similarity, which
    # whitening learned on the images themselves hurts; near duplicates are instance-level, where it
    # spreads distinct images apart (docs/results.md, "Semantic-based aggregation")
    whitening = D.fit_whitening(raw, settings.whiten_dim)
    duplicates = D.finish(raw, D.fit_whitening(raw, settings.duplicate_whiten_dim))
    return Index(ids=[r["id"] for r in rows], splits=[r["split"] for r in rows], tags=[list(r["tags"]) for r in rows],
                 classes=classes, root=str(root), descriptors=D.finish(raw, whitening), duplicate_descriptors=duplicates,
                 detectors=detectors, whitening=whitening, settings=settings, key=key or {})


def ensure(path: str | Path, manifest: str | Path, network: str, checkpoint: str | Path | None,
           settings: D.Settings, device: torch.device, rebuild: bool = False,
           log=print) -> tuple[Index, torch.nn.Module]:
    """(the index at `path`, the network): loaded when it was built from the same manifest, network
    and settings, else built (one forward pass per image) and saved there atomically."""
    key = build_key(manifest, network, checkpoint, settings)
    model = load_network(network, checkpoint, device)
    path = Path(path)
    if path.is_file() and not rebuild:
        try:
            index = Index.load(path)
        except IndexFileError as exc:
            log(f"{exc}: rebuilding it")
        else:
            if index.key == key:
                return index, model
            log(f"descriptor index {path} was built from another manifest, network or settings: rebuilding it")
    index = build(manifest, model, settings, device, key)
    index.save(path)
    log(f"descriptor index of {len(index)} images -> {path}")
    return index, model
