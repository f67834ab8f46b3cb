"""Peak response maps (Zhou et al., CVPR 2018, "Weakly Supervised Instance Segmentation using
Class Peak Response"): from each local peak of a class response map, backpropagate to the input
image; the input's relevance, summed over its colour channels and clamped at 0, is that peak's
response map, an instance-sized cue.

Core, tensors and arrays in and out:
  - `find_peaks`: the local maxima of one class map that PRM backpropagates from;
  - `peak_responses`: one response map per peak (plain input gradient, or the reference's
    excitation rule: `excitation_backprop`);
  - `class_maps`: peak responses over scales (and flips) -> k x H x W maps in [0, 1], the same
    shape and scale as wsss.localization.cams.multiscale_maps, so the threshold sweep scores both alike;
  - `instances`: peak responses + a region map -> (class, score, mask) per instance, with NMS.
`PrmExport` runs them for the map export (wsss/localization/cams.py) and writes the instance store,
overlays and the contact sheet.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss.dataset.images import to_tensor
from models.classifier import peak_mask
from wsss.stores import instancestore
from wsss.tracking import panels
from wsss.training.runtime import place


@dataclass
class Peak:
    cls: int               # dataset class index (1..C)
    score: float           # the class response map's value at the peak
    response: np.ndarray   # H x W float32 >= 0 at image size, max 1 (or all 0)


# --- peaks and their backpropagation -------------------------------------------------------------

def find_peaks(cmap: torch.Tensor, window: int, max_peaks: int, threshold: float) -> list[tuple[int, int, float]]:
    """(y, x, value) of the local maxima of an h x w map (`window` x `window`), at least
    `threshold` x the map's max and above 0, strongest first, at most `max_peaks`."""
    cmap = cmap.detach().float()
    top = float(cmap.max())
    if top <= 0:
        return []
    keep = peak_mask(cmap[None, None], window, above_median=False)[0, 0] & (cmap >= threshold * top)
    ys, xs = torch.nonzero(keep, as_tuple=True)
    values = cmap[ys, xs]
    order = torch.argsort(values, descending=True, stable=True)[:max_peaks]
    return [(int(ys[i]), int(xs[i]), float(values[i])) for i in order]


class _PreHook(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming relevance by the (offset) input."""

    @staticmethod
    def forward(ctx, x, offset):
        ctx.save_for_backward(x, offset)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        x, offset = ctx.saved_tensors
        return (x - offset) * grad, None


class _PostHook(torch.autograd.Function):
    """Passes the conv's real output forward; backward divides the relevance by the positive-weight
    response (norm), which then flows back through the positive-weight conv."""

    @staticmethod
    def forward(ctx, out, norm):
        ctx.save_for_backward(norm)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        norm, = ctx.saved_tensors
        return None, torch.where(norm < 1e-10, torch.zeros_like(grad), grad / (norm.abs() + 1e-10))


def _excitation_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A conv whose backward is excitation backprop's marginal winning probability (the PRM
    reference's pr_conv2d): relevance is passed to inputs in proportion to input x positive weight;
    the input is shifted by its minimum so that it is non-negative."""
    x = self.static_padding(x) if hasattr(self, "static_padding") else x   # TF "same" padding convs
    offset = x.min().detach()
    x = _PreHook.apply(x, offset)
    args = (self.stride, self.padding, self.dilation, self.groups)
    out = F.conv2d(x, self.weight, self.bias, *args).detach()
    norm = F.conv2d(x - offset, F.relu(self.weight).detach(), None, *args)
    return _PostHook.apply(out, norm)


@contextlib.contextmanager
def excitation_backprop(model: nn.Module):
    """Every Conv2d of `model` backpropagates by the excitation rule inside the block (forward
    values unchanged); restored on exit."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        m.forward = MethodType(_excitation_conv, m)
    try:
        yield model
    finally:
        for m in convs:
            del m.forward   # the instance attribute; the class's forward shows again


def peak_responses(model, x: torch.Tensor, channels: list[int], window: int, max_peaks: int,
                   threshold: float, backprop: str = "excitation") -> list[tuple[int, float, torch.Tensor]]:
    """x: 1 x 3 x h x w in 0..255. For each output channel in `channels` and each of its peaks
    (find_peaks): (channel, peak value, h x w response >= 0 on the input grid)."""
    if backprop not in ("gradient", "excitation"):
        raise ValueError(f"maps.prm.backprop: {backprop!r} is not gradient or excitation")
    x = x.detach().clone().requires_grad_(True)
    rule = excitation_backprop(model) if backprop == "excitation" else contextlib.nullcontext()
    out = []
    with torch.enable_grad(), rule:
        maps = model(x)[1][0]
        for c in channels:
            for y, xx, value in find_peaks(maps[c], window, max_peaks, threshold):
                grad, = torch.autograd.grad(maps[c, y, xx], x, retain_graph=True)
                out.append((c, value, grad[0].sum(0).clamp_min(0).detach()))
    return out


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """N x H x W maps blurred by a separable Gaussian of `sigma` pixels (reflect padding)."""
    if sigma <= 0 or maps.numel() == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    if radius < 1:
        return maps
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]


def region_mean(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Each k x H x W map replaced, in every region of the H x W label map, by its mean there."""
    labels = regions.reshape(-1).astype(np.int64)
    labels = labels - labels.min() if labels.size else labels
    sizes = np.maximum(np.bincount(labels), 1)
    out = [(np.bincount(labels, weights=m.reshape(-1), minlength=len(sizes)) / sizes)[labels].reshape(m.shape)
           for m in maps]
    return np.stack(out).astype(np.float32) if out else maps


def class_maps(model, image: np.ndarray, tags: list[int], scales: list[float], flip: bool, device,
               cfg: dict, window: int, regions: np.ndarray | None = None) -> tuple[np.ndarray, list[Peak]]:
    """(k x H x W maps in [0, 1], every peak's response at image size).

    Each peak's response is resized to the image, smoothed by cfg["sigma"] pixels (input gradients
    are spiky: a few strong pixels on edges and textures, not a region) and scaled to max 1; a
    class's map at one view is the max over its peaks, summed over the views (scales, flips), with
    cfg["region_mean"] averaged within each of `regions` (the superpixels: the map then follows
    image edges), and scaled to max 1, as CAMs are in wsss.localization.cams.multiscale_maps."""
    h, w = image.shape[:2]
    if not tags:
        return np.zeros((0, h, w), np.float32), []
    channels = [t - 1 for t in tags]
    total = torch.zeros(len(tags), h, w)
    peaks: list[Peak] = []
    for scale in scales:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        x = place(to_tensor(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)))[None], device)
        for mirrored in ((False, True) if flip else (False,)):
            found = peak_responses(model, x.flip(-1) if mirrored else x, channels, window, cfg["max_peaks"],
                                   cfg["peak_threshold"], cfg["backprop"])
            if not found:
                continue
            responses = torch.stack([r for _, _, r in found]).float()
            responses = responses.flip(-1) if mirrored else responses
            responses = gaussian_blur(_resize(responses, (h, w)), cfg["sigma"]).cpu()
            responses = responses / responses.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            view = torch.zeros(len(tags), h, w)
            for (c, value, _), r in zip(found, responses):
                k = channels.index(c)
                view[k] = torch.maximum(view[k], r)
                peaks.append(Peak(c + 1, value, r.numpy()))
            total += view
    maps = total.numpy()
    if cfg.get("region_mean") and regions is not None:
        maps = region_mean(maps, regions)
    return maps / np.maximum(maps.reshape(len(maps), -1).max(1), 1e-5)[:, None, None], peaks


# --- instances ---------------------------------------------------------------------------------

def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def instances(prms, peak_classes, peak_scores, regions: np.ndarray, fraction: float = 0.3,
              nms_iou: float = 0.5) -> list[tuple[int, float, np.ndarray]]:
    """Instance masks from peak responses and region proposals; pure (arrays in, arrays out).

    prms: P x H x W responses (>= 0), one per peak; peak_classes, peak_scores: P each; regions:
    H x W int labels (superpixels). A peak's mask is the union of the regions whose mean response
    exceeds `fraction` x the best region's mean. Its score is the peak score x the share of the
    peak's response mass the mask holds (a mask that misses most of its own response scores low).
    Instances of one class whose masks overlap by IoU > `nms_iou` keep only the higher score.
    Returns (class, score, H x W bool mask), best score first; peaks with no response give none.
    """
    prms = np.asarray(prms, np.float64)
    regions = np.asarray(regions)
    if prms.ndim != 3 or prms.shape[1:] != regions.shape:
        raise ValueError(f"instances: responses {prms.shape} do not match regions {regions.shape}")
    if len(peak_classes) != len(prms) or len(peak_scores) != len(prms):
        raise ValueError("instances: one class and one score per peak response")
    labels = regions.reshape(-1).astype(np.int64)
    labels = labels - labels.min() if labels.size else labels
    n = int(labels.max()) + 1 if labels.size else 0
    sizes = np.maximum(np.bincount(labels, minlength=n), 1)
    found = []
    for prm, cls, score in zip(prms, peak_classes, peak_scores):
        r = prm.reshape(-1)
        mass = r.sum()
        if mass <= 0:
            continue
        means = np.bincount(labels, weights=r, minlength=n) / sizes
        mask = (means > fraction * means.max())[labels]
        found.append((int(cls), float(score) * float(r[mask].sum() / mass), mask.reshape(regions.shape)))
    found.sort(key=lambda item: -item[1])
    kept: list[tuple[int, float, np.ndarray]] = []
    for cls, score, mask in found:
        if all(c != cls or mask_iou(mask, m) <= nms_iou for c, _, m in kept):
            kept.append((cls, score, mask))
    return kept


def proposal_regions(image: np.ndarray, cfg: dict) -> np.ndarray:
    """H x W int32 region proposals of an RGB image: skimage's felzenszwalb (scale = cfg["region_scale"]),
    slic (n_segments = cfg["region_scale"]), or `merged`: the pseudo labels' superpixel region
    merging (wsss/labelling/superpixels.py, its default settings, cfg["region_scale"] SLIC superpixels)."""
    from skimage.segmentation import felzenszwalb, slic

    if cfg["regions"] == "merged":
        from wsss.config.params import DEFAULTS
        from wsss.labelling import superpixels
        merged_cfg = {**DEFAULTS["pseudo_labels"]["superpixels"], "n_segments": int(cfg["region_scale"])}
        return superpixels.regions(image, merged_cfg).astype(np.int32)
    if cfg["regions"] == "felzenszwalb":
        return felzenszwalb(image, scale=cfg["region_scale"], sigma=0.8, min_size=50).astype(np.int32)
    return slic(image, n_segments=int(cfg["region_scale"]), compactness=10, start_label=0).astype(np.int32)


# --- the map export's PRM side -------------------------------------------------------------------

CONTACT_SHEET = "instances_contact_sheet.png"
TILE_W = 240   # contact-sheet tile width: overlays are drawn at this size, so their labels stay legible


def thumbnail_overlay(image: np.ndarray, found: list[tuple[int, float, np.ndarray]], classes: list[str]) -> np.ndarray:
    """panels.instances_overlay of the image and masks scaled to TILE_W wide."""
    h, w = image.shape[:2]
    size = (TILE_W, max(1, round(h * TILE_W / w)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    masks = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
             for _, _, m in found]
    return panels.instances_overlay(small, [(c, s, m) for (c, s, _), m in zip(found, masks)], classes)


@dataclass
class PrmExport:
    """maps.method prm in wsss.localization.cams.export: per image its class maps (returned for the map
    store), its instances (kept packed for artifacts/maps/instances.parquet), a few overlays and
    the contact sheet's tiles. Runs in fp32 (input gradients in bf16 lose the weak pixels)."""

    model: nn.Module
    classes: list[str]
    maps_cfg: dict
    device: torch.device
    rows: list[dict] = field(default_factory=list)
    tiles: list[tuple[str, np.ndarray]] = field(default_factory=list)
    n_images: int = 0
    n_peaks: int = 0
    hits: int = 0        # instance pixels whose ground truth is the instance's class
    labelled: int = 0    # instance pixels with a ground truth (void left out)

    def __post_init__(self):
        self.cfg = self.maps_cfg["prm"]
        self.window = int(getattr(self.model, "peak_window", 3))

    def maps(self, image_id: str, image: np.ndarray, tags: list[int],
             mask: np.ndarray | None) -> tuple[np.ndarray, list[tuple[int, float, np.ndarray]]]:
        """(k x H x W class maps in [0, 1], the image's instances)."""
        regions = proposal_regions(image, self.cfg) if tags else None
        maps, peaks = class_maps(self.model, image, tags, self.cfg["scales"], self.maps_cfg["flip"], self.device,
                                 self.cfg, self.window, regions)
        found = []
        if peaks:
            found = instances(np.stack([p.response for p in peaks]), [p.cls for p in peaks],
                              [p.score for p in peaks], regions, self.cfg["instance_fraction"], self.cfg["nms_iou"])
        self.n_images += 1
        self.n_peaks += len(peaks)
        self.rows += instancestore.rows(image_id, found)
        if mask is not None:
            for cls, _, m in found:
                gt = mask[m]
                self.hits += int((gt == cls).sum())
                self.labelled += int((gt != 255).sum())
        if found and len(self.tiles) < self.cfg["n_contact"]:
            self.tiles.append((f"{image_id}: {len(found)}", thumbnail_overlay(image, found, self.classes)))
        return maps, found

    def write_reports(self, report_dir: Path) -> dict:
        """The contact sheet (instances_contact_sheet.png) into the report folder being written."""
        if self.tiles:
            panels.contact_sheet(self.tiles, tile_w=TILE_W).save(report_dir / CONTACT_SHEET)
        return {"contact_sheet_images": len(self.tiles)}

    def write_store(self, store: Path) -> dict:
        """instances.parquet into the (finished) map store; the export's PRM metrics."""
        instancestore.write_rows(self.rows, Path(store) / instancestore.FILE, self.classes)
        return {"method": "prm", "prm_scales": self.cfg["scales"], "prm_backprop": self.cfg["backprop"],
                "n_peaks": self.n_peaks, "n_instances": len(self.rows),
                "instances_per_image": round(len(self.rows) / max(self.n_images, 1), 2),
                "instance_pixel_precision": round(100 * self.hits / self.labelled, 2) if self.labelled else None}
