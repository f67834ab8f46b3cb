"""Learned inter-pixel affinity and random-walk propagation (AffinityNet: Ahn & Kwak, CVPR 2018).

Training: the maps' confident regions label pixel pairs within `radius` cells of a grid: both
confident background, both the same confident class (positive) or different labels (negative); a
pair touching the uncertain band is ignored. A network learns features whose distance says
"same region": affinity a(p, q) = exp(-mean |f_p - f_q|).
Propagation: the maps and a background score, on the same grid, walk `steps` times over the
transition matrix T = D^-1 A^beta (rows sum to 1), so scores spread inside regions and stop at
the edges the affinities learned.

Pure functions: label maps, tensors and arrays in, arrays out (no files, no tracking).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from wsss.localization.refinement import resized_maps
from wsss.dataset.images import grid_labels

IGNORE = 255


def confident_labels(maps: np.ndarray, classes: list[int], fg_threshold: float, bg_threshold: float) -> np.ndarray:
    """k x H x W maps (each class scaled to max 1) of the tagged `classes` -> H x W uint8: the
    argmax class where the best map is >= fg_threshold, 0 (background) where it is < bg_threshold,
    IGNORE between. An image without tags is all background."""
    if len(classes) == 0:
        return np.zeros(maps.shape[1:], np.uint8)
    best = maps.max(0)
    labels = np.asarray(classes, np.uint8)[maps.argmax(0)]
    labels[best < fg_threshold] = IGNORE
    labels[best < bg_threshold] = 0
    return labels


def crf_confident_labels(image: np.ndarray, maps: np.ndarray, classes: list[int], fg_threshold: float,
                         bg_threshold: float, crf_cfg: dict) -> np.ndarray:
    """`confident_labels` with each region snapped to the image's edges by a dense CRF (IRN's recipe):
    the CRF of the maps' argmax against a constant background score, once at fg_threshold (its
    class pixels are confident foreground) and once at bg_threshold (its background pixels are
    confident background); IGNORE elsewhere."""
    from wsss.labelling.crf import crf_argmax

    if len(classes) == 0:
        return np.zeros(maps.shape[1:], np.uint8)
    lookup = np.asarray([0, *classes], np.uint8)

    def crf_winner(bg: float) -> np.ndarray:
        hard = np.concatenate([np.full((1, *maps.shape[1:]), bg, maps.dtype), maps]).argmax(0)
        probs = np.full((len(classes) + 1, *hard.shape), 0.3 / len(classes), np.float32)   # a label, 70% sure
        np.put_along_axis(probs, hard[None], 0.7, 0)
        return crf_argmax(np.ascontiguousarray(image), probs, crf_cfg)

    fg, bg = crf_winner(fg_threshold), crf_winner(bg_threshold)
    labels = lookup[fg]
    labels[fg == 0] = IGNORE
    labels[(fg == 0) & (bg == 0)] = 0
    return labels


def offsets(radius: int) -> list[tuple[int, int]]:
    """Half of the disc of `radius` cells around a pixel, (dy, dx) with dy > 0 or (dy == 0, dx > 0):
    each unordered pair of neighbours once."""
    return [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx <= radius * radius]


def _pair_slices(h: int, w: int, dy: int, dx: int):
    """(source, target) slices of an h x w grid: target pixel = source pixel + (dy, dx)."""
    x0, x1 = max(0, -dx), w - max(0, dx)
    return (slice(0, h - dy), slice(x0, x1)), (slice(dy, h), slice(x0 + dx, x1 + dx))


def pair_affinities(features: torch.Tensor, pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
    """B x D x h x w features -> per offset, B x h' x w' affinities exp(-mean |f_p - f_q|) in (0, 1]."""
    h, w = features.shape[-2:]
    out = []
    for dy, dx in pairs:
        (sy, sx), (ty, tx) = _pair_slices(h, w, dy, dx)
        out.append(torch.exp(-(features[..., sy, sx] - features[..., ty, tx]).abs().mean(1)))
    return out


def pair_labels(labels: torch.Tensor, pairs: list[tuple[int, int]]) -> list[tuple[torch.Tensor, ...]]:
    """B x h x w grid labels -> per offset, (background-positive, foreground-positive, negative)
    boolean masks of the pairs; pairs touching IGNORE are in none of them."""
    h, w = labels.shape[-2:]
    out = []
    for dy, dx in pairs:
        (sy, sx), (ty, tx) = _pair_slices(h, w, dy, dx)
        a, b = labels[..., sy, sx], labels[..., ty, tx]
        known = (a != IGNORE) & (b != IGNORE)
        same = known & (a == b)
        out.append((same & (a == 0), same & (a != 0), known & (a != b)))
    return out


def affinity_loss(affinities: list[torch.Tensor], labels: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """AffinityNet's balanced cross-entropy: background pairs 1/4, foreground pairs 1/4, negatives 1/2,
    each the mean over its own pairs (a kind absent from the batch adds nothing)."""
    a = torch.cat([x.flatten() for x in affinities])
    bg, fg, neg = (torch.cat([lab[i].flatten() for lab in labels]) for i in range(3))
    eps = 1e-5
    terms = [(torch.log(a[bg] + eps), 0.25), (torch.log(a[fg] + eps), 0.25), (torch.log(1 + eps - a[neg]), 0.5)]
    return sum((-v.mean() * weight for v, weight in terms if v.numel()), a.new_zeros(()))


def transition_matrix(affinities: list[np.ndarray], pairs: list[tuple[int, int]], shape: tuple[int, int],
                      beta: float) -> sp.csr_matrix:
    """Row-stochastic N x N (N = h * w) random-walk transitions from the per-offset affinities
    (h' x w' each): A is symmetric with a(p, q) ** beta for each pair and 1 on the diagonal (every
    pixel keeps a share of its own score), T = D^-1 A."""
    h, w = shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [index.ravel()], [index.ravel()], [np.ones(h * w)]
    for (dy, dx), aff in zip(pairs, affinities):
        (sy, sx), (ty, tx) = _pair_slices(h, w, dy, dx)
        src, dst, a = index[sy, sx].ravel(), index[ty, tx].ravel(), np.asarray(aff, np.float64).ravel() ** beta
        rows += [src, dst]
        cols += [dst, src]
        vals += [a, a]
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w))
    return sp.diags(1.0 / np.asarray(matrix.sum(1)).ravel()) @ matrix


def random_walk(transitions: sp.csr_matrix, scores: np.ndarray, steps: int) -> np.ndarray:
    """C x h x w scores after `steps` walk steps: each pixel takes the transition-weighted mean of its
    neighbours' scores, `steps` times (x <- T x)."""
    c, h, w = scores.shape
    x = scores.reshape(c, h * w).T.astype(np.float64)
    for _ in range(steps):
        x = transitions @ x
    return x.T.reshape(c, h, w).astype(np.float32)


def background_score(maps: np.ndarray, power: float) -> np.ndarray:
    """(1 - the best class's map) ** power at each pixel of k >= 1 maps: AffinityNet's background cue.
    A higher power shrinks the background's claim to where no class is near."""
    return (1.0 - maps.max(0)) ** power


def walk_features(maps: np.ndarray, features: torch.Tensor, cfg: dict) -> np.ndarray:
    """`propagate` over the affinities of one image's network features (1 x D x h x w); cfg: refiner.affinity."""
    pairs = offsets(cfg["radius"])
    affinities = [a[0].float().cpu().numpy() for a in pair_affinities(features, pairs)]
    return propagate(maps, affinities, pairs, tuple(features.shape[-2:]), cfg["beta"], cfg["steps"], cfg["bg_power"])


def propagate(maps: np.ndarray, affinities: list[np.ndarray], pairs: list[tuple[int, int]], grid: tuple[int, int],
              beta: float, steps: int, bg_power: float) -> np.ndarray:
    """k x H x W maps -> k x H x W propagated maps, each pixel's class share against background
    p_c / (p_c + p_bg) after the walk: a map above 0.5 is where its class outscores background.

    The maps are averaged onto the affinities' h x w `grid`, walked with the background score, and
    resized back."""
    k, hh, ww = maps.shape
    if k == 0:
        return maps
    h, w = grid
    small = F.adaptive_avg_pool2d(torch.from_numpy(maps)[None], (h, w))[0].numpy()
    scores = np.concatenate([background_score(small, bg_power)[None], small])
    walked = random_walk(transition_matrix(affinities, pairs, (h, w), beta), scores, steps)
    big = F.interpolate(torch.from_numpy(walked)[None], size=(hh, ww), mode="bilinear", align_corners=False)[0]
    bg, fg = big[:1], big[1:]
    return (fg / (fg + bg).clamp_min(1e-8)).numpy()


class ConfidentTarget:
    """The confident labels of stored maps (uint8, from wsss.stores.mapstore) for
    `wsss.dataset.crops.TrainingCrops`: maps resized to the rescaled image, labelled, then flipped and
    cropped with it (padding is IGNORE). `crf_labels` ({id: labels at image size}, from
    crf_confident_labels) replaces the thresholding: those labels are resized instead."""

    dense, fill = True, IGNORE

    def __init__(self, maps, fg_threshold: float, bg_threshold: float, crf_labels=None):
        self.maps, self.fg, self.bg, self.crf_labels = maps, fg_threshold, bg_threshold, crf_labels

    def load(self, image_id: str, source_hw, size_hw) -> np.ndarray:
        if self.crf_labels is not None:
            labels = torch.from_numpy(self.crf_labels[image_id])[None, None].float()
            return F.interpolate(labels, size=tuple(size_hw), mode="nearest")[0, 0].numpy().astype(np.uint8)
        classes, maps_u8 = self.maps[image_id]
        return confident_labels(resized_maps(maps_u8, size_hw), classes, self.fg, self.bg)

    def to_tensor(self, target: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(target.astype(np.int64))


def batch_loss(radius: int, stride: int):
    """`wsss.training.trainer.fit`'s batch_loss for an AffinityNet and ConfidentTarget crops."""
    pairs = offsets(radius)

    def loss(model, batch):
        x, labels = batch
        return affinity_loss(pair_affinities(model(x), pairs), pair_labels(grid_labels(labels, stride), pairs))
    return loss
