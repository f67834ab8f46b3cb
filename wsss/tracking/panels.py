"""Sample panels for people: columns side by side, each titled (image, maps, labels, ground truth),
with a legend of the classes they show. Map export, pseudo labels and segmenter evaluation all draw
their samples here.

Columns narrower than MIN_COLUMN_W (the 64 x 64 demo images) are scaled up by a whole factor,
pixels kept sharp, so titles and legend fit and stay readable. Each panel carries its layout in
`panel.info["layout"]` (title row height, column boxes, legend entries with their swatch boxes,
scale) for tests and tools; PNG files written with `.save()` do not store it.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.dataset import images
from wsss.scoring.metrics import IGNORE

MIN_COLUMN_W = 192      # px: narrower columns are scaled up (nearest neighbour) to at least this
FONT_PX = 13
PAD = 4
TITLE_LINES = 2         # longer titles are wrapped, then cut with an ellipsis
BACKGROUND, TEXT = (40, 40, 40), (255, 255, 255)
VOID_NAME = f"uncertain / void ({IGNORE})"


def _font(size: int = FONT_PX):
    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) where Pillow has it
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _legend_items(label_arrays: list[np.ndarray], class_names: list[str]) -> list[tuple[tuple, str]]:
    """(VOC palette colour, name) of every label value present, in label order; 255 is
    'uncertain / void (255)', a value without a name 'class N'."""
    present = sorted({int(v) for a in label_arrays for v in np.unique(a)})
    palette = np.array(images.palette(), np.uint8).reshape(-1, 3)
    items = []
    for v in present:
        name = VOID_NAME if v == IGNORE else class_names[v] if v < len(class_names) else f"class {v}"
        items.append((tuple(int(c) for c in palette[v]), name))
    return items


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """text, cut with an ellipsis to fit width."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float, max_lines: int) -> list[str]:
    lines: list[str] = []
    words = text.split(" ")
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:  # more than max_lines: the last line carries the rest, cut
        lines[-1] = " ".join([lines[-1], *words])
    return [_fit(draw, line, font, width) for line in lines]


def _rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"panel column: expected H x W x 3 (or H x W), got shape {array.shape}")
    return array.astype(np.uint8, copy=False)


def compose(columns: list[tuple[str, np.ndarray]], legend: list[tuple[tuple, str]], heat: bool = False) -> Image.Image:
    """columns: (title, H x W x 3 uint8), all of one size; legend: (rgb, name). heat: add a
    0..1 colour bar for heat-map columns."""
    if not columns:
        raise ValueError("panel: no columns")
    arrays = [_rgb(a) for _, a in columns]
    h, w = arrays[0].shape[:2]
    if any(a.shape[:2] != (h, w) for a in arrays):
        raise ValueError(f"panel: columns differ in size: {[a.shape[:2] for a in arrays]}")
    scale = math.ceil(MIN_COLUMN_W / w) if w < MIN_COLUMN_W else 1
    cw, ch = w * scale, h * scale
    width = cw * len(columns)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag(", font=font)[3] + 3
    swatch = line_h - 3

    titles = [_wrap(probe, title, font, cw - 2 * PAD, TITLE_LINES) for title, _ in columns]
    title_h = max(len(t) for t in titles) * line_h + 2 * PAD

    # legend entries flow left to right and wrap at the panel's width; a name too long for a row is cut
    rows: list[list[tuple[int, tuple, str]]] = []
    x = width
    for rgb, name in legend:
        name = _fit(probe, name, font, width - 3 * PAD - swatch - 4)
        item_w = swatch + 4 + int(math.ceil(probe.textlength(name, font=font))) + 3 * PAD
        if not rows or x + item_w > width:
            rows.append([])
            x = PAD
        rows[-1].append((x, rgb, name))
        x += item_w
    legend_h = (len(rows) + (1 if heat else 0)) * line_h
    legend_h += 2 * PAD if legend_h else 0

    out = Image.new("RGB", (width, title_h + ch + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(out)
    layout = {"scale": scale, "title_h": title_h, "columns": [], "legend": [], "heat_bar": None}
    for i, ((title, _), array, lines) in enumerate(zip(columns, arrays, titles)):
        tile = Image.fromarray(array)
        if scale > 1:
            tile = tile.resize((cw, ch), Image.NEAREST)
        out.paste(tile, (i * cw, title_h))
        for k, line in enumerate(lines):
            draw.text((i * cw + PAD, PAD + k * line_h), line, fill=TEXT, font=font)
        if i:  # a thin separator between columns in the title row
            draw.line([(i * cw, 0), (i * cw, title_h - 1)], fill=(90, 90, 90))
        layout["columns"].append({"title": title, "box": (i * cw, title_h, (i + 1) * cw, title_h + ch)})
    y = title_h + ch + PAD
    for row in rows:
        for x, rgb, name in row:
            box = (x, y + 1, x + swatch, y + 1 + swatch)
            draw.rectangle(box, fill=rgb, outline=(200, 200, 200))
            draw.text((x + swatch + 4, y), name, fill=TEXT, font=font)
            layout["legend"].append({"name": name, "rgb": rgb, "swatch": box})
        y += line_h
    if heat:
        left, right = "map 0", "1 = class peak"
        left_w = probe.textlength(left, font=font) + PAD
        if width - 4 * PAD - left_w - probe.textlength(right, font=font) < 48:
            right = "1"
        bar_x = int(PAD + left_w)
        bar_w = int(min(200, width - 3 * PAD - left_w - probe.textlength(right, font=font) - PAD))
        if bar_w > 0:
            bar = images.colourise(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (swatch, 1)))
            draw.text((PAD, y), left, fill=TEXT, font=font)
            out.paste(Image.fromarray(bar), (bar_x, y + 1))
            draw.text((bar_x + bar_w + PAD, y), right, fill=TEXT, font=font)
            layout["heat_bar"] = (bar_x, y + 1, bar_x + bar_w, y + 1 + swatch)
    out.info["layout"] = layout
    return out


def maps_panel(image: np.ndarray, maps: np.ndarray, tags: list[int], mask: np.ndarray | None,
               class_names: list[str]) -> Image.Image:
    """Image | strongest tagged-class map as a heat map | ground truth (if any)."""
    heat = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    names = ", ".join(class_names[t] if t < len(class_names) else f"class {t}" for t in tags) or "no tags"
    columns = [("image", image), (f"maps: {names}", images.blend(image, images.colourise(heat)))]
    legend = []
    if mask is not None:
        columns.append(("ground truth", images.colour_labels(mask)))
        legend = _legend_items([mask], class_names)
    return compose(columns, legend, heat=True)


def labels_panel(image: np.ndarray, predictions: list[tuple[str, np.ndarray]], mask: np.ndarray | None,
                 class_names: list[str]) -> Image.Image:
    """Image | each labelling (title, H x W labels; 255 in the VOC palette's cream) | ground truth (if any)."""
    columns = [("image", image)] + [(title, images.colour_labels(lab)) for title, lab in predictions]
    arrays = [lab for _, lab in predictions]
    if mask is not None:
        columns.append(("ground truth", images.colour_labels(mask)))
        arrays.append(mask)
    return compose(columns, _legend_items(arrays, class_names))


# Instance colours: distinct hues, cycled; an instance's colour is its rank in its image, not its class.
INSTANCE_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def instances_overlay(image: np.ndarray, found: list[tuple[int, float, np.ndarray]],
                      class_names: list[str]) -> np.ndarray:
    """The image with each instance (class, score, H x W bool mask) tinted in its own colour,
    outlined, and labelled `class score` at the mask's inner point nearest its centroid; the best
    instance is drawn last, on top."""
    out = image.astype(np.float32).copy()
    edges = []
    for k, (_, _, mask) in reversed(list(enumerate(found))):
        colour = np.array(INSTANCE_COLOURS[k % len(INSTANCE_COLOURS)], np.float32)
        out[mask] = 0.45 * out[mask] + 0.55 * colour
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        edges.append((mask & ~inner, colour))
    for edge, colour in edges:
        out[edge] = colour
    picture = Image.fromarray(out.astype(np.uint8))
    draw, font = ImageDraw.Draw(picture), _font()
    for k, (cls, score, mask) in enumerate(found):
        ys, xs = np.nonzero(mask)
        if not len(ys):
            continue
        nearest = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        name = class_names[cls] if cls < len(class_names) else f"class {cls}"
        text = f"{name} {score:.2f}"
        box = draw.textbbox((int(xs[nearest]), int(ys[nearest])), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((box[0], box[1]), text, fill=INSTANCE_COLOURS[k % len(INSTANCE_COLOURS)], font=font)
    return np.asarray(picture)


def instances_panel(image: np.ndarray, found: list[tuple[int, float, np.ndarray]], mask: np.ndarray | None,
                    class_names: list[str]) -> Image.Image:
    """Image | its instances (instances_overlay) | ground truth (if any)."""
    columns = [("image", image), (f"instances: {len(found)}", instances_overlay(image, found, class_names))]
    legend = []
    if mask is not None:
        columns.append(("ground truth", images.colour_labels(mask)))
        legend = _legend_items([mask], class_names)
    return compose(columns, legend)


def contact_sheet(tiles: list[tuple[str, np.ndarray]], columns: int = 6, tile_w: int = 240) -> Image.Image:
    """Many (title, H x W x 3) pictures on one sheet: a grid of `columns`, each scaled to `tile_w`
    wide (height in proportion, rows as tall as their tallest), its title above it."""
    if not tiles:
        raise ValueError("contact sheet: no tiles")
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag(", font=font)[3] + 3
    scaled = []
    for title, array in tiles:
        array = _rgb(array)
        h, w = array.shape[:2]
        size = (tile_w, max(1, round(h * tile_w / w)))
        scaled.append((_fit(probe, title, font, tile_w - 2 * PAD), Image.fromarray(array).resize(size, Image.BILINEAR)))
    rows = [scaled[i:i + columns] for i in range(0, len(scaled), columns)]
    heights = [line_h + PAD + max(t.height for _, t in row) + PAD for row in rows]
    width = min(columns, len(scaled)) * (tile_w + PAD) + PAD
    sheet = Image.new("RGB", (width, sum(heights) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = PAD
    for row, row_h in zip(rows, heights):
        for i, (title, tile) in enumerate(row):
            x = PAD + i * (tile_w + PAD)
            draw.text((x, y), title, fill=TEXT, font=font)
            sheet.paste(tile, (x, y + line_h))
        y += row_h
    return sheet
