"""Similarity queries on unit descriptors (wsss/retrieval/descriptors.py): dot product = cosine.

- `search`: one query's k best matches;
- `nearest_neighbours`: every image's k nearest other images (ids + scores), e.g. the groups of
  visually similar images the group-wise classifier can train on;
- `near_duplicates`: image pairs across two splits (and within a split, optionally) scoring at or
  above a threshold: the train/val leak check.
Score matrices are computed `chunk` rows at a time, so memory stays chunk x N.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CHUNK = 1024


def _unit(descriptors: np.ndarray) -> np.ndarray:
    x = np.asarray(descriptors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be images x dims, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
        x = x / np.maximum(norms, 1e-12)[:, None]   # cosine whatever the caller passed
    return x


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties: lower index first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def search(descriptors: np.ndarray, query: np.ndarray, k: int = 8, candidates: np.ndarray | None = None,
           exclude: int | None = None) -> list[tuple[int, float]]:
    """[(row, cosine)] of the k rows most similar to `query`, best first. candidates: a boolean mask
    of the rows that may be returned; exclude: a row left out (the query itself when it is indexed)."""
    x = _unit(descriptors)
    q = np.asarray(query, dtype=np.float32).ravel()
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = x @ q
    allowed = np.ones(len(x), bool) if candidates is None else np.asarray(candidates, bool).copy()
    if exclude is not None:
        allowed[exclude] = False
    rows = np.flatnonzero(allowed)
    best = rows[_top(scores[rows], k)]
    return [(int(i), float(scores[i])) for i in best]


def nearest_neighbours(descriptors: np.ndarray, ids: Sequence[str], k: int = 5,
                       min_score: float = -1.0) -> dict[str, list[tuple[str, float]]]:
    """{id: [(neighbour id, cosine), ...]}: each image's k most similar other images, best first,
    keeping only those scoring at least `min_score`.

    descriptors: N x d, one row per id (unit rows from wsss.retrieval.index / descriptors.describe;
    others are normalised here). An image is never its own neighbour; duplicate images are each
    other's first neighbours with a score near 1."""
    x = _unit(descriptors)
    ids = list(ids)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} descriptors")
    out: dict[str, list[tuple[str, float]]] = {}
    for start in range(0, len(x), CHUNK):
        scores = x[start:start + CHUNK] @ x.T
        for r, row in enumerate(scores):
            i = start + r
            row[i] = -np.inf
            best = _top(row, k)
            out[ids[i]] = [(ids[j], float(row[j])) for j in best if row[j] >= min_score]
    return out


def near_duplicates(descriptors: np.ndarray, ids: Sequence[str], splits: Sequence[str], threshold: float,
                    first: str = "train", second: str = "val", within: bool = False) -> list[dict]:
    """Pairs scoring >= threshold, best first: every `first` x `second` pair, plus (within) pairs
    inside `first` and inside `second`. Each: {"a", "split_a", "b", "split_b", "score"}, a from
    `first` in a cross-split pair."""
    x = _unit(descriptors)
    splits = np.asarray(list(splits))
    ids = list(ids)
    pairs = []
    rows_a = np.flatnonzero(splits == first)
    rows_b = np.flatnonzero(splits == second)
    blocks = [(rows_a, rows_b, False)]
    if within:
        blocks += [(rows_a, rows_a, True), (rows_b, rows_b, True)]
    for a_rows, b_rows, same in blocks:
        for start in range(0, len(a_rows), CHUNK):
            ra = a_rows[start:start + CHUNK]
            scores = x[ra] @ x[b_rows].T
            for r, c in zip(*np.nonzero(scores >= threshold)):
                i, j = int(ra[r]), int(b_rows[c])
                if same and j <= i:   # each unordered pair once, never an image with itself
                    continue
                pairs.append({"a": ids[i], "split_a": str(splits[i]), "b": ids[j], "split_b": str(splits[j]),
                              "score": round(float(scores[r, c]), 6)})
    pairs.sort(key=lambda p: (-p["score"], p["a"], p["b"]))
    return pairs


def best_match_scores(descriptors: np.ndarray, splits: Sequence[str], first: str = "train",
                      second: str = "val") -> np.ndarray:
    """Each `second` image's best cosine against the `first` images: the distribution a near-duplicate
    threshold is picked from (a clear gap above the bulk is where copies sit)."""
    x = _unit(descriptors)
    splits = np.asarray(list(splits))
    a, b = x[splits == first], x[splits == second]
    if not len(a) or not len(b):
        return np.zeros(0, np.float32)
    return np.concatenate([(b[s:s + CHUNK] @ a.T).max(axis=1) for s in range(0, len(b), CHUNK)])
