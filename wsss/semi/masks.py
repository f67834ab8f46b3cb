"""Which training images' masks may be used, the file that records them, and the one reader of
training masks in semi-supervised mode.

Every training mask train_semi reads goes through `MaskReader`, which refuses any id not in the
chosen list; val masks are read only by the scoring path (wsss/training/segmentation.py, evaluate).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.dataset import voc
from wsss.stores.atomic import write_text


class UnlistedMask(voc.DataError):
    """A training mask that is not one of the masked images was asked for."""


def choose(rows: list[dict], masks: int | list[str], seed: int, split: str, choice: str = "random") -> list[str]:
    """The masked images among a split's manifest rows, in split order.

    masks: a count: the first N of a seeded order of the split's images that have a mask (so for one
    seed, 10 chosen images are among the 33, and those among the 100); or the ids themselves, each of
    which must be in the split and have a mask. choice (counts only): the order is a seeded permutation
    (`random`), or `balanced` (by image-level tags, see balanced_order).
    """
    have = [r for r in rows if r["has_mask"]]
    if isinstance(masks, int):
        if masks > len(have):
            raise voc.DataError(f"semi.masks: {masks} masks asked for, but only {len(have)} images of split "
                                f"{split!r} have one")
        order = np.random.default_rng(seed).permutation(len(have)).tolist()
        if choice == "balanced":
            order = [order[j] for j in balanced_order([have[i]["tags"] for i in order], masks)]
        elif choice != "random":
            raise ValueError(f"semi.choice: unknown {choice!r} (random | balanced)")
        chosen = {have[i]["id"] for i in order[:masks]}
    else:
        in_split = {r["id"]: r["has_mask"] for r in rows}
        for image_id in masks:
            if image_id not in in_split:
                raise voc.DataError(f"semi.masks: image {image_id!r} is not in the train split {split!r}")
            if not in_split[image_id]:
                raise voc.DataError(f"semi.masks: image {image_id!r} has no mask (looked for "
                                    f"{'/'.join(voc.MASK_DIRS)}/{image_id}.png)")
        chosen = set(masks)
    return [r["id"] for r in rows if r["id"] in chosen]


def balanced_order(tags: list, n: int) -> list[int]:
    """Indices into `tags` (each image's image-level classes, in a seeded order): the first n picked
    greedily so that every class gets masks before any gets many. Each pick is the first image whose
    least-masked class has the fewest masks so far (tags only: no mask is read to choose), so a class
    that a random 10% misses gets one, and the person-heavy images stop crowding out the rest.
    Prefix-stable like the random order: the first 10 of 33 are the 10 of a count of 10."""
    counts: dict[int, int] = {}
    left, picked = list(range(len(tags))), []
    for _ in range(min(n, len(tags))):
        rarest = [min((counts.get(t, 0) for t in tags[i]), default=float("inf")) for i in left]
        best = rarest.index(min(rarest))   # ties: the seeded order decides
        i = left.pop(best)
        picked.append(i)
        for t in tags[i]:
            counts[t] = counts.get(t, 0) + 1
    return picked + left


def write_ids(path: str | Path, ids: list[str], header: str) -> None:
    """One id a line after `# ` header lines (atomic): the record DVC versions."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    write_text(comments + "".join(f"{i}\n" for i in ids), path)


def read_ids(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines()
            if line.strip() and not line.startswith("#")]


class MaskReader:
    """The masks of the listed images, and of no other: the only way train_semi reads a training mask."""

    def __init__(self, root: str | Path, ids: list[str], n_classes: int, source: str = "semi.masks"):
        self.root, self.ids, self.n_classes, self.source = root, frozenset(ids), n_classes, source

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(self, image_id: str) -> np.ndarray:
        if image_id not in self.ids:
            raise UnlistedMask(f"image {image_id!r} is not one of the {len(self.ids)} masked images ({self.source}): "
                               "its mask may not be used for training")
        mask = voc.load_mask(self.root, image_id, self.n_classes)
        if mask is None:
            raise voc.DataError(f"image {image_id!r} is listed as masked but has no mask "
                                f"({voc.mask_path(self.root, image_id)})")
        return mask
