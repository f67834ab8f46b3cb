"""Superpixel region merging for the pseudo labels: labels decided per image region.

Paper idea: region-growing segmentation from superpixels. A contour-constrained over-segmentation
(superpixels) is grown by iteratively merging the most similar pair of adjacent regions, best
first (a priority queue over the region adjacency graph, neighbours re-scored after each merge),
until the best similarity falls below a threshold or a target region count is reached. The
similarity is adaptive and multi-scale: it compares the regions' content (colour mean against
their own colour spread, i.e. texture) and their common border (its length relative to the smaller
perimeter, and the edge strength along it), and weighs content more as regions grow, since a
small region's statistics are noisy while its border is informative.

From scikit-image: the SLIC over-segmentation (skimage.segmentation.slic), CIELAB colours
(skimage.color.rgb2lab), Sobel edges (skimage.filters.sobel) and the initial region adjacency
graph with each border's length and mean edge strength (skimage.graph.rag_boundary).
Ours: `similarity`, the best-first merge in `merge_regions`, and `vote`, which gives each merged
region the majority of the pseudo labels inside it (255 never votes).

Arrays in, arrays out; `cfg` is params.yaml's pseudo_labels.superpixels section.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
from skimage import color, filters, graph
from skimage.segmentation import slic

from wsss.scoring.metrics import IGNORE


@dataclass
class Region:
    n: int                    # pixels
    total: np.ndarray         # sum of Lab colours
    squares: np.ndarray       # sum of squared Lab colours
    perimeter: float          # boundary pixels on both sides of each border, plus 2 x image-frame pixels
    borders: dict = field(default_factory=dict)   # neighbour id -> [count, edge_sum], one list shared by both ends

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.n

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.squares / self.n - self.mean ** 2, 0.0)


def over_segment(image: np.ndarray, cfg: dict) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW int32 superpixel ids 0..n-1 (SLIC in CIELAB, connected segments)."""
    seg = slic(image, n_segments=cfg["n_segments"], compactness=cfg["compactness"], start_label=0)
    return np.unique(seg, return_inverse=True)[1].reshape(seg.shape).astype(np.int32)


def similarity(a: Region, b: Region, border: list, cfg: dict, superpixel_size: float) -> float:
    """In [0, 1]; 1: merge first."""
    count, edge_sum = border
    # Content: the colour difference relative to the regions' own spread (texture), so textured
    # regions tolerate larger differences. The smaller spread of the two: a region that already
    # grew across an object boundary has a large spread and must not swallow its flat neighbours
    # (with the sum, merging chained into one region per image). colour_floor: flat regions' noise.
    spread = np.minimum(a.var, b.var) + cfg["colour_floor"] ** 2
    content = float(np.exp(-np.mean((a.mean - b.mean) ** 2 / spread)))
    # Border: a strong edge along the common border says two objects meet there.
    edge = float(np.exp(-edge_sum / count / cfg["edge_scale"]))
    # Adaptive scale: trust content once both regions span several superpixels, the border before;
    # a weighted geometric mean, so a strong edge still keeps large regions apart.
    smaller = min(a.n, b.n)
    alpha = smaller / (smaller + cfg["size_scale"] * superpixel_size)
    # A region mostly enclosed by the other (a long shared border) is a better merge than a touch:
    # the exponent lifts the similarity towards 1 but keeps 0 at 0, so it never overrides an edge.
    shared = count / min(a.perimeter, b.perimeter)
    return (content ** alpha * edge ** (1 - alpha)) ** (1 - shared / 2)


def _initial_regions(image: np.ndarray, segments: np.ndarray) -> list[Region]:
    lab = color.rgb2lab(image).reshape(-1, 3)
    edges = np.sqrt(sum(filters.sobel(lab[:, c].reshape(segments.shape)) ** 2 for c in range(3)))
    ids = segments.ravel()
    k = int(ids.max()) + 1
    n = np.bincount(ids, minlength=k)
    total = np.stack([np.bincount(ids, lab[:, c], k) for c in range(3)], 1)
    squares = np.stack([np.bincount(ids, lab[:, c] ** 2, k) for c in range(3)], 1)
    frame = np.concatenate([segments[0], segments[-1], segments[1:-1, 0], segments[1:-1, -1]])
    perimeter = 2.0 * np.bincount(frame, minlength=k)
    regions = [Region(int(n[i]), total[i], squares[i], float(perimeter[i])) for i in range(k)]
    # 4-connected borders: 'count' is the boundary pixels on both sides, 'weight' their mean edge.
    for a, b, d in graph.rag_boundary(segments, edges, connectivity=1).edges(data=True):
        border = [float(d["count"]), float(d["weight"]) * d["count"]]
        regions[a].borders[b] = regions[b].borders[a] = border
        regions[a].perimeter += border[0]
        regions[b].perimeter += border[0]
    return regions


def merge_regions(image: np.ndarray, segments: np.ndarray, cfg: dict) -> np.ndarray:
    """Best-first merging of adjacent superpixels -> HxW int32 region ids 0..m-1."""
    regions = _initial_regions(image, segments)
    superpixel_size = segments.size / len(regions)
    parent = np.arange(len(regions))
    stamp = [0] * len(regions)   # bumped on every merge: a queued pair with an old stamp is stale
    heap = []

    def push(a: int, b: int):
        s = similarity(regions[a], regions[b], regions[a].borders[b], cfg, superpixel_size)
        heapq.heappush(heap, (-s, a, b, stamp[a], stamp[b]))

    for a, region in enumerate(regions):
        for b in region.borders:
            if a < b:
                push(a, b)
    alive = len(regions)
    while heap and alive > cfg["target_regions"]:
        neg, a, b, sa, sb = heapq.heappop(heap)
        if stamp[a] != sa or stamp[b] != sb:
            continue
        if -neg < cfg["threshold"]:
            break   # the global criterion: no remaining pair is similar enough
        ra, rb = regions[a], regions[b]
        ab = ra.borders.pop(b)
        del rb.borders[a]
        ra.n, ra.total, ra.squares = ra.n + rb.n, ra.total + rb.total, ra.squares + rb.squares
        ra.perimeter += rb.perimeter - 2 * ab[0]   # the common border is inside now
        for c, bc in rb.borders.items():   # b's borders become a's; a border to a common neighbour adds up
            del regions[c].borders[b]
            if c in ra.borders:
                ra.borders[c][0] += bc[0]
                ra.borders[c][1] += bc[1]
            else:
                ra.borders[c] = regions[c].borders[a] = bc
        rb.borders = {}
        parent[b] = a
        stamp[a] += 1
        stamp[b] = -1
        alive -= 1
        for c in ra.borders:   # only pairs with the grown region changed similarity
            push(a, c)
    # Follow each superpixel to the region it ended in, then number the regions 0..m-1.
    root = parent.copy()
    while not np.array_equal(root, root[root]):
        root = root[root]
    return np.unique(root, return_inverse=True)[1].astype(np.int32)[segments]


def regions(image: np.ndarray, cfg: dict) -> np.ndarray:
    """Over-segmentation then merging: HxW int32 region ids."""
    return merge_regions(image, over_segment(image, cfg), cfg)


def vote(labels: np.ndarray, region_ids: np.ndarray, cfg: dict) -> np.ndarray:
    """Each region takes the majority of its labelled pixels (255 never votes), where that majority
    holds at least `vote_min` of them and at least `min_labelled` of the region is labelled; other
    regions keep their per-pixel labels (`undecided: keep`) or become 255 (`undecided: ignore`)."""
    ids = region_ids.ravel().astype(np.int64)
    k = int(ids.max()) + 1
    counts = np.bincount(ids * 256 + labels.ravel(), minlength=k * 256).reshape(k, 256)
    size = counts.sum(1)
    counts = counts[:, :IGNORE]
    labelled = counts.sum(1)
    winner = counts.argmax(1).astype(np.uint8)
    share = counts.max(1) / np.maximum(labelled, 1)
    decided = (labelled > 0) & (labelled >= cfg["min_labelled"] * size) & (share >= cfg["vote_min"])
    out = labels.copy()
    hit = decided[region_ids]
    out[hit] = winner[region_ids][hit]
    if cfg["undecided"] == "ignore":
        out[~hit] = IGNORE
    return out
