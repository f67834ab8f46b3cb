"""Global image descriptors from one convolutional feature map, for image search.

SBA, semantic-based aggregation (Xu et al., "Unsupervised semantic-based aggregation of deep
convolutional features", IEEE TIP 2019, arXiv 1804.01422; the journal version of their PWA,
AAAI 2018, whose released code fixes the details the paper leaves open):
  1. every channel of the last conv layer is a detector of some semantic pattern; an unsupervised
     rule picks `detectors` of them from the dataset itself: the channels whose mean-pooled response
     varies most across the images (the authors' code: a channel that fires on everything or on
     nothing tells images apart poorly), or (`selection: frequency`) the channels most often among an
     image's strongest;
  2. each selected channel's map, made non-negative and raised to `power` (the authors' square
     root: it flattens the peak so a proposal covers the object part, not one pixel), then
     normalised to sum 1, is a "probabilistic proposal": a soft region on the object pattern that
     channel detects, with the background near zero;
  3. a proposal's regional feature is the proposal-weighted sum of the whole feature map (a C-vector:
     what the image looks like where that pattern is);
  4. the regional features are concatenated (the paper; `aggregate: concat`) or summed (shipped:
     better on voc2012-mini), then L2-normalised, PCA-whitened if asked (learned on the dataset's own
     descriptors, no labels), and L2-normalised again, so cosine similarity = dot product.
Measured (docs/results.md, "Semantic-based aggregation"): on the trained classifier SBA beats SPoC
and MAC, but random channels make proposals as good as the selected ones.
Baselines of the same feature map, post-processed the same way (L2, the same whitening, L2):
  SPoC (Babenko & Lempitsky, ICCV 2015): sum pooling weighted by a Gaussian centre prior (sigma a
       third of the centre-to-nearest-border distance; `centre_prior: false` = plain sum pooling);
  MAC  (Tolias et al., ICLR 2016): the spatial max of each channel;
  R-MAC (same paper): MACs of square regions on a grid of `rmac_levels` scales (40 % overlap, the
       whole map included), each L2-normalised, summed. The paper whitens each region before the
       sum; here the sum is whitened once like every other descriptor.

Pooling works on N x C x h x w tensors of one batch (images of one size); `extract` runs the network
over a list of images in same-size batches with a progress bar.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from wsss.dataset import images as image_ops

METHODS = ("sba", "spoc", "mac", "rmac")
SELECTIONS = ("variance", "frequency")
AGGREGATES = ("concat", "sum")
EPS = 1e-12

ImageSource = Union[str, Path, np.ndarray, Callable[[], np.ndarray]]


class ImageError(ValueError):
    """A query or dataset file that is not a readable image; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The descriptor's settings: params.yaml's `search` section minus where things live."""

    method: str = "sba"            # sba | spoc | mac | rmac
    long_side: int = 384           # every image resized to this long side: one scale
    detectors: int = 100           # sba: selected channels (the paper: 25 of VGG-16's 512)
    selection: str = "variance"    # sba: variance | frequency
    power: float = 0.5             # sba: proposal = relu(map) ** power, then sum-normalised
    aggregate: str = "sum"         # sba: sum | concat (the paper) of the regional features
    centre_prior: bool = True      # spoc: Gaussian centre weighting
    rmac_levels: int = 3           # rmac: region scales
    whiten_dim: int = 0            # search: PCA-whitening output dims; 0: no whitening
    duplicate_whiten_dim: int = 256   # near duplicates: the same, for instance-level matching
    select_images: int = 512       # sba: images (evenly spaced) whose responses choose the detectors
    batch_size: int = 8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"search.method: {self.method!r} is not one of {list(METHODS)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"search.selection: {self.selection!r} is not one of {list(SELECTIONS)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"search.aggregate: {self.aggregate!r} is not one of {list(AGGREGATES)}")

    @classmethod
    def from_section(cls, section: dict) -> "Settings":
        """From params.yaml's `search` section (its other keys are ignored)."""
        return cls(**{f.name: section[f.name] for f in fields(cls) if f.name in section})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- pooling (N x C x h x w -> N x D)

def mean_pooled(features: torch.Tensor) -> torch.Tensor:
    """Each channel's mean response: the statistics the detectors are selected by."""
    return features.mean(dim=(2, 3))


def proposals(features: torch.Tensor, detectors: Sequence[int] | torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """N x n x h x w: the selected channels' maps as probability maps (non-negative, each summing to 1).
    A channel silent on an image gives the uniform map (its regional feature is then the mean
    feature, rather than nothing)."""
    index = torch.as_tensor(np.ascontiguousarray(detectors, dtype=np.int64), device=features.device)
    maps = features.index_select(1, index).clamp_min(0) ** power
    total = maps.sum(dim=(2, 3), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / (maps.shape[2] * maps.shape[3]))
    return torch.where(total > EPS, maps / total.clamp_min(EPS), uniform)


def sba(features: torch.Tensor, detectors: Sequence[int] | torch.Tensor, power: float = 0.5,
        aggregate: str = "concat") -> torch.Tensor:
    """N x (n C) (concat) or N x C (sum): the proposal-weighted sums of the feature map."""
    p = proposals(features, detectors, power)
    regional = torch.einsum("nkhw,nchw->nkc", p, features)   # one C-vector per proposal
    return regional.flatten(1) if aggregate == "concat" else regional.sum(dim=1)


def centre_prior(h: int, w: int, device=None) -> torch.Tensor:
    """SPoC's h x w Gaussian weights centred on the map, sigma = 1/3 of the distance from the centre
    to the nearest border (Babenko & Lempitsky)."""
    ys = torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2
    sigma = max(min(h, w) / 2, 0.5) / 3
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))


def spoc(features: torch.Tensor, prior: bool = True) -> torch.Tensor:
    if not prior:
        return features.sum(dim=(2, 3))
    weights = centre_prior(*features.shape[2:], device=features.device).to(features.dtype)
    return (features * weights).sum(dim=(2, 3))


def mac(features: torch.Tensor) -> torch.Tensor:
    return features.amax(dim=(2, 3))


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """(top, left, side) of R-MAC's square regions on an h x w map: level l has squares of side
    2 min(h, w) / (l + 1), l (+ the extra ones the longer side needs) per dimension, spaced so that
    neighbours overlap by about `overlap`; the whole map is the first region."""
    short, long_ = min(h, w), max(h, w)
    extra = 0   # regions the longer dimension gets beyond the shorter's: the count whose overlap is nearest 40 %
    if long_ > short:
        steps = np.arange(2, 8)
        spacing = (long_ - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short ** 2 - short * spacing) / short ** 2 - overlap))) + 1
    extra_h, extra_w = (extra, 0) if h > w else (0, extra)
    regions = [(0, 0, -1)]   # -1: the whole map (MAC)
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            continue
        half = math.floor(side / 2 - 1)

        def starts(size: int, n: int) -> list[int]:
            step = (size - side) / (n - 1) if n > 1 else 0
            return [int(math.floor(half + i * step) - half) for i in range(n)]

        for top in starts(h, level + extra_h):
            for left in starts(w, level + extra_w):
                regions.append((top, left, side))
    return regions


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def rmac(features: torch.Tensor, levels: int = 3) -> torch.Tensor:
    total = torch.zeros(features.shape[:2], dtype=features.dtype, device=features.device)
    for top, left, side in rmac_regions(*features.shape[2:], levels):
        region = features if side < 0 else features[:, :, top:top + side, left:left + side]
        total += _l2(region.amax(dim=(2, 3)))
    return total


def pool(method: str, features: torch.Tensor, settings: Settings, detectors=None) -> torch.Tensor:
    """The raw (not yet normalised or whitened) descriptor of `method`, or `mean` (selection statistics)."""
    if method == "mean":
        return mean_pooled(features)
    if method == "sba":
        if detectors is None or len(detectors) == 0:
            raise ValueError("sba needs the selected detectors (select_detectors on the dataset's mean responses)")
        return sba(features, detectors, settings.power, settings.aggregate)
    if method == "spoc":
        return spoc(features, settings.centre_prior)
    if method == "mac":
        return mac(features)
    if method == "rmac":
        return rmac(features, settings.rmac_levels)
    raise ValueError(f"unknown descriptor {method!r}; one of {list(METHODS)}")


# ---------------------------------------------------------------- detector selection (unsupervised)

def select_detectors(responses: np.ndarray, n: int, rule: str = "variance") -> np.ndarray:
    """The `n` channels to use as semantic detectors, from images x channels mean responses.

    variance (the authors' code): the channels whose response varies most across the images.
    frequency: the channels most often among an image's `n` strongest (ties: larger variance first).
    No labels: only the dataset's own responses."""
    responses = np.asarray(responses, dtype=np.float64)
    if responses.ndim != 2 or len(responses) == 0:
        raise ValueError(f"select_detectors: expected images x channels responses, got shape {responses.shape}")
    n = min(int(n), responses.shape[1])
    variance = responses.var(axis=0)
    if rule == "variance":
        return np.argsort(-variance, kind="stable")[:n]
    if rule == "frequency":
        top = np.argsort(-responses, axis=1, kind="stable")[:, :n]
        counts = np.bincount(top.ravel(), minlength=responses.shape[1])
        return np.lexsort((-variance, -counts))[:n]
    raise ValueError(f"selection rule {rule!r} is not one of {list(SELECTIONS)}")


# ---------------------------------------------------------------- normalisation and whitening

def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


@dataclass
class Whitening:
    """PCA-whitening: y = (x - mean) @ projection, projection's columns the top principal directions
    divided by the square root of their variance, so every kept direction weighs alike (frequent,
    correlated activations stop dominating the cosine)."""

    mean: np.ndarray          # D
    projection: np.ndarray    # D x d

    MAX_FIT_ROWS = 4096       # fitted on at most this many descriptors (evenly spaced): the SVD is N^2 D

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> "Whitening":
        """On L2-normalised descriptors N x D. dim is capped by the rank (N - 1, D): note that
        whitening N images to N - 1 dims makes them all equidistant, so keep dim well below N."""
        return cls.fit_many(x, [dim])[dim]

    @classmethod
    def fit_many(cls, x: np.ndarray, dims: Sequence[int]) -> dict[int, "Whitening"]:
        """{dim: whitening} from one PCA (the benchmark sweeps dims)."""
        from sklearn.decomposition import PCA   # imported here: only search and its benchmark whiten

        x = np.asarray(x, dtype=np.float32)
        if len(x) > cls.MAX_FIT_ROWS:
            x = x[np.linspace(0, len(x) - 1, cls.MAX_FIT_ROWS).round().astype(int)]
        # the full SVD: exact and repeatable (svd_solver auto may pick the randomised one)
        pca = PCA(n_components=min(max(dims), *x.shape), whiten=True, svd_solver="full")
        with np.errstate(divide="ignore", invalid="ignore"):   # one image or no variance: raised below
            variance = pca.fit(x).explained_variance_.astype(np.float64)
        rank = int(np.count_nonzero(variance > np.nanmax(variance, initial=0) * 1e-10))
        if rank < 1:
            raise ValueError(f"whitening: the {len(x)} descriptors do not vary (identical images?); "
                             "set search.whiten_dim: 0")
        keep = min(max(dims), rank)
        # pca.transform with whiten=True as one matrix: (x - mean_) @ components_.T / sqrt(explained_variance_)
        projection = (pca.components_[:keep].T / np.sqrt(variance[:keep])).astype(np.float32)
        mean = pca.mean_.astype(np.float32)
        return {dim: cls(mean, projection[:, :min(dim, keep)]) for dim in dims}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.projection


def finish(raw: np.ndarray, whitening: Whitening | None) -> np.ndarray:
    """L2-normalise, whiten, L2-normalise: unit rows whose dot products are cosine similarities."""
    x = l2_normalise(raw)
    return l2_normalise(whitening(x)) if whitening is not None else x


# ---------------------------------------------------------------- the network side

def feature_maps(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The localizer's last feature map (backbone, then its extra convs: what its class conv sees)
    for images N x 3 x H x W in 0..255."""
    if not all(hasattr(model, a) for a in ("normalize", "backbone")):
        raise TypeError(f"{type(model).__name__} is not a CAM classifier (needs normalize and backbone): "
                        "search uses the classifier's checkpoint (artifacts/classifier.pt)")
    features = model.backbone(model.normalize(batch))
    extra = getattr(model, "extra", None)
    return extra(features) if extra is not None else features


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8; a missing or unreadable file raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found" if not path.exists() else f"{path} is not a file")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path} is not a readable image ({exc})") from None


def load_source(source: ImageSource) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    if callable(source):
        return source()
    return read_image(source)


Pooler = Callable[[torch.Tensor], torch.Tensor]   # N x C x h x w features -> N x D


@torch.no_grad()
def extract_with(model: torch.nn.Module, sources: Sequence[ImageSource], poolers: dict[str, Pooler],
                 long_side: int, batch_size: int, device: torch.device, desc: str = "descriptors") -> dict[str, np.ndarray]:
    """{name: N x D} of every pooler over the images' feature maps, in the images' order, one forward
    pass per image. sources: paths, H x W x 3 uint8 arrays, or callables returning one. Each image
    is resized to `long_side`; images of the same resulting size share a batch (up to batch_size),
    so nothing is padded or cropped."""
    model = model.eval()
    out: dict[str, list] = {name: [None] * len(sources) for name in poolers}
    buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = {}

    def run(bucket: list[tuple[int, torch.Tensor]]) -> None:
        batch = torch.stack([t for _, t in bucket]).to(device)
        features = feature_maps(model, batch).float()
        for name, pooler in poolers.items():
            pooled = pooler(features).cpu().numpy()
            for row, (i, _) in enumerate(bucket):
                out[name][i] = pooled[row]
        bucket.clear()

    for i, source in enumerate(tqdm(sources, desc=desc, unit="img", dynamic_ncols=True)):
        image = image_ops.resize_long(load_source(source), long_side)
        tensor = image_ops.to_tensor(image)
        bucket = buckets.setdefault(tuple(tensor.shape), [])
        bucket.append((i, tensor))
        if len(bucket) >= batch_size:
            run(bucket)
    for bucket in buckets.values():
        if bucket:
            run(bucket)
    return {name: np.stack(v).astype(np.float32) if v else np.zeros((0, 0), np.float32) for name, v in out.items()}


def extract(model: torch.nn.Module, sources: Sequence[ImageSource], settings: Settings, device: torch.device,
            methods: Sequence[str], detectors=None, desc: str = "descriptors") -> dict[str, np.ndarray]:
    """{method: N x D raw descriptors} (not yet normalised or whitened) of the images, in batches
    with a progress bar (extract_with). methods: any of METHODS, and `mean` (selection statistics)."""
    poolers = {m: (lambda f, m=m: pool(m, f, settings, detectors)) for m in methods}
    return extract_with(model, sources, poolers, settings.long_side, settings.batch_size, device, desc)


def fit_whitening(raw: np.ndarray, dim: int) -> Whitening | None:
    """PCA-whitening of raw descriptors to `dim` dims (None for 0), learned on them after L2
    normalisation; dim is capped at half the image count, since whitening N images towards N - 1
    dims makes every pair equidistant."""
    if dim <= 0:
        return None
    return Whitening.fit(l2_normalise(raw), max(1, min(dim, len(raw) // 2)))


def raw_descriptors(model: torch.nn.Module, sources: Sequence[ImageSource], settings: Settings,
                    device: torch.device, select_from: Sequence[ImageSource] | None = None,
                    desc: str = "descriptors") -> tuple[np.ndarray, np.ndarray]:
    """(N x D raw settings.method descriptors, the selected detectors). SBA's detectors are chosen
    from the images' own responses: `select_from`, default up to settings.select_images of
    `sources`, evenly spaced (an extra forward pass over those)."""
    detectors = np.zeros(0, np.int64)
    if settings.method == "sba":
        if select_from is None:
            n = min(len(sources), settings.select_images)
            select_from = [sources[i] for i in np.linspace(0, len(sources) - 1, n).round().astype(int)]
        responses = extract(model, select_from, settings, device, ["mean"], desc="sba: select detectors")["mean"]
        detectors = select_detectors(responses, settings.detectors, settings.selection)
    raw = extract(model, sources, settings, device, [settings.method], detectors, desc=desc)[settings.method]
    return raw, detectors


def describe(model: torch.nn.Module, sources: Sequence[ImageSource], settings: Settings, device: torch.device,
             select_from: Sequence[ImageSource] | None = None, desc: str = "descriptors",
             ) -> tuple[np.ndarray, np.ndarray, Whitening | None]:
    """(N x d unit descriptors, the selected detectors, the whitening) of `sources` with
    settings.method, everything learned from the images themselves (raw_descriptors, fit_whitening
    with settings.whiten_dim)."""
    raw, detectors = raw_descriptors(model, sources, settings, device, select_from, desc)
    whitening = fit_whitening(raw, settings.whiten_dim)
    return finish(raw, whitening), detectors, whitening
