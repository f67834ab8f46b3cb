"""The bottom-up step of a label round (Wang et al., *Weakly-supervised semantic segmentation by
iteratively mining common object features*, CVPR 2018), on arrays only.

Objects of one class share features across images. Every image's confident regions (its
tag-restricted segmenter probability above `confidence`) add their L2-normalised features to one
prototype per class, background included; a second pass scores each pixel of each image by the
cosine similarity of its feature to the prototypes of the image's own classes (softmax over them,
temperature `temperature`) and blends that with the segmenter's probabilities:

    maps = (1 - weight) * probabilities + weight * softmax(similarity / temperature)

so regions the segmenter missed but that look like the class elsewhere in the dataset are picked
up, and the round's labels do not just copy one network's mistakes. With saliency maps, `bayes`
combines the result with saliency under the paper's Bayesian view: saliency is the prior of
"some object", the maps the likelihood of each class.
"""
from __future__ import annotations

import numpy as np


def restrict(probs: np.ndarray, classes: list[int]) -> np.ndarray:
    """C x H x W softmax over all classes -> (1 + k) x H x W over background + the image's tags,
    renormalised (classes outside the tags cannot be in the image)."""
    kept = probs[[0, *classes]]
    return kept / np.maximum(kept.sum(0, keepdims=True), 1e-6)


def unit(features: np.ndarray) -> np.ndarray:
    """D x h x w features with each pixel's vector scaled to length 1."""
    return features / np.maximum(np.linalg.norm(features, axis=0, keepdims=True), 1e-6)


class Prototypes:
    """Per class: the sum and count of the unit features of its confident pixels, over all images."""

    def __init__(self, n_classes: int, dim: int):
        self.sums = np.zeros((n_classes, dim), np.float64)
        self.counts = np.zeros(n_classes, np.int64)

    def add(self, features: np.ndarray, probs: np.ndarray, classes: list[int], confidence: float) -> None:
        """features D x h x w; probs (1 + k) x h x w restricted to [0, *classes] at the features' size."""
        flat = unit(features).reshape(features.shape[0], -1)
        winner, top = probs.argmax(0).ravel(), probs.max(0).ravel()
        for j, c in enumerate([0, *classes]):
            sel = (winner == j) & (top > confidence)
            if sel.any():
                self.sums[c] += flat[:, sel].sum(1)
                self.counts[c] += int(sel.sum())

    def vectors(self) -> np.ndarray:
        """n_classes x D unit prototypes (rows of zeros where a class had no confident pixel)."""
        return unit(self.sums.T[:, :, None])[:, :, 0].T * (self.counts > 0)[:, None]


def similarity(features: np.ndarray, prototypes: np.ndarray, classes: list[int], temperature: float) -> np.ndarray:
    """(1 + k) x h x w: softmax over [0, *classes] of each pixel's cosine similarity to their prototypes;
    all NaN when one of them has no prototype (no confident pixel anywhere in the dataset)."""
    index = [0, *classes]
    sims = np.einsum("kd,dhw->khw", prototypes[index], unit(features)) / temperature
    if not (np.linalg.norm(prototypes[index], axis=1) > 0).all():
        return np.full(sims.shape, np.nan, np.float32)
    e = np.exp(sims - sims.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def expand(probs: np.ndarray, similar: np.ndarray, weight: float) -> np.ndarray:
    """Blend restricted probabilities with the prototype match (both (1 + k) x H x W). When one of
    the image's classes has no prototype the match would favour the others, so the image keeps
    the segmenter's probabilities."""
    if np.isnan(similar).any():
        return probs
    return (1 - weight) * probs + weight * similar


def bayes(maps: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """Posterior of each class given saliency as the prior of 'an object': background x (1 - s),
    the object classes x s, renormalised. maps: (1 + k) x H x W with background first."""
    prior = np.concatenate([(1 - saliency)[None], np.repeat(saliency[None], maps.shape[0] - 1, 0)])
    post = maps * prior
    return post / np.maximum(post.sum(0, keepdims=True), 1e-6)
