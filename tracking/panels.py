"""Sample panels for people: columns side by side, each titled (image, maps, labels, ground truth),
with a legend of the classes they show. Map export, pseudo labels and segmenter evaluation all draw
their samples here."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dataset import images
from scoring.metrics import IGNORE

TITLE_H, LEGEND_ROW_H, SWATCH, PAD = 16, 16, 12, 4


def label_colours(labels: np.ndarray) -> np.ndarray:
    return images.colour_labels(labels)


def _legend_items(label_arrays: list[np.ndarray], class_names: list[str]) -> list[tuple[tuple, str]]:
    present = sorted({int(v) for a in label_arrays for v in np.unique(a)})
    palette = np.array(images.palette(), np.uint8).reshape(-1, 3)
    items = []
    for v in present:
        if v == IGNORE:
            items.append((tuple(int(c) for c in palette[v]), "uncertain / void (255)"))
        elif v < len(class_names):
            items.append((tuple(int(c) for c in palette[v]), class_names[v]))
    return items


def compose(columns: list[tuple[str, np.ndarray]], legend: list[tuple[tuple, str]], heat: bool = False) -> Image.Image:
    """columns: (title, H x W x 3 uint8) of one size; legend: (rgb, name). heat: add a 0..1 colour bar."""
    h, w = columns[0][1].shape[:2]
    width = w * len(columns)
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # legend entries flow left to right and wrap at the panel's width
    rows, x = [[]], PAD
    for rgb, name in legend:
        item_w = SWATCH + 3 + int(draw_probe.textlength(name)) + 2 * PAD
        if x + item_w > width and rows[-1]:
            rows.append([])
            x = PAD
        rows[-1].append((x, rgb, name))
        x += item_w
    n_rows = len(rows) if legend else 0
    legend_h = n_rows * LEGEND_ROW_H + (LEGEND_ROW_H if heat else 0) + (PAD if n_rows or heat else 0)
    out = Image.new("RGB", (width, TITLE_H + h + legend_h), (40, 40, 40))
    draw = ImageDraw.Draw(out)
    for i, (title, array) in enumerate(columns):
        out.paste(Image.fromarray(array), (i * w, TITLE_H))
        draw.text((i * w + PAD, 2), title, fill=(255, 255, 255))
    y = TITLE_H + h + PAD
    for row in rows if legend else []:
        for x, rgb, name in row:
            draw.rectangle([x, y + 1, x + SWATCH, y + 1 + SWATCH], fill=rgb, outline=(200, 200, 200))
            draw.text((x + SWATCH + 3, y + 1), name, fill=(255, 255, 255))
        y += LEGEND_ROW_H
    if heat:
        bar_w = min(160, width - 8 * PAD)
        bar = images.colourise(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (SWATCH, 1)))
        draw.text((PAD, y + 1), "map 0", fill=(255, 255, 255))
        out.paste(Image.fromarray(bar), (PAD + 40, y + 1))
        draw.text((PAD + 44 + bar_w, y + 1), "1 (class peak)", fill=(255, 255, 255))
    return out


def maps_panel(image: np.ndarray, maps: np.ndarray, tags: list[int], mask: np.ndarray | None,
               class_names: list[str]) -> Image.Image:
    """Image | strongest tagged-class map as a heat map | ground truth (if any)."""
    heat = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    columns = [("image", image), ("maps: " + ", ".join(class_names[t] for t in tags), images.blend(image, images.colourise(heat)))]
    legend = []
    if mask is not None:
        columns.append(("ground truth", label_colours(mask)))
        legend = _legend_items([mask], class_names)
    return compose(columns, legend, heat=True)


def labels_panel(image: np.ndarray, predictions: list[tuple[str, np.ndarray]], mask: np.ndarray | None,
                 class_names: list[str]) -> Image.Image:
    """Image | each labelling (title, H x W labels; 255 white) | ground truth (if any)."""
    columns = [("image", image)] + [(title, label_colours(lab)) for title, lab in predictions]
    arrays = [lab for _, lab in predictions]
    if mask is not None:
        columns.append(("ground truth", label_colours(mask)))
        arrays.append(mask)
    return compose(columns, _legend_items(arrays, class_names))
