"""Contact sheets of search results and near-duplicate pairs (tracking/panels.contact_sheet)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from wsss.tracking.panels import contact_sheet


def search_sheet(query: tuple[str, np.ndarray], results: list[tuple[str, np.ndarray]], columns: int = 5,
                 tile_w: int = 200) -> Image.Image:
    """The query first, then the results in rank order; each tile titled (the titles carry the scores)."""
    return contact_sheet([query, *results], columns=columns, tile_w=tile_w)


def pairs_sheet(pairs: list[dict], load: Callable[[str], np.ndarray], tile_w: int = 200,
                pairs_per_row: int = 2) -> Image.Image:
    """One pair after the other, left to right: a's image titled with its split and id, then b's
    titled with its split, id and the pair's score."""
    tiles = []
    for n, p in enumerate(pairs, 1):
        tiles.append((f"{n}. {p['split_a']} {p['a']}", load(p["a"])))
        tiles.append((f"{p['split_b']} {p['b']}  {p['score']:.3f}", load(p["b"])))
    return contact_sheet(tiles, columns=2 * pairs_per_row, tile_w=tile_w)
