"""Pictures for people: sample panels (titled columns, a legend of the classes shown, a colour bar
for heat maps) and the charts (confusion matrix, per-class IoU)."""
import numpy as np
import pytest
from PIL import Image

from wsss.dataset import images
from wsss.tracking import charts, panels

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
PALETTE = np.array(images.palette(), np.uint8).reshape(-1, 3)


def _sample(size=64):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2, : size // 2] = 15          # person
    mask[size // 2:, size // 2:] = 11            # diningtable
    mask[size // 3] = 255                        # a void line
    pred = mask.copy()
    pred[: size // 4, size // 2:] = 16           # pottedplant, predicted only
    return image, pred, mask


def _pixels(panel, box):
    x0, y0, x1, y1 = box
    return np.asarray(panel)[y0:y1, x0:x1]


def test_labels_panel_titles_each_column_and_lists_exactly_the_classes_shown(tmp_path):
    image, pred, mask = _sample(64)
    panel = panels.labels_panel(image, [("prediction", pred), ("prediction + CRF", mask)], mask, VOC)
    layout = panel.info["layout"]
    cols = layout["columns"]
    assert [c["title"] for c in cols] == ["image", "prediction", "prediction + CRF", "ground truth"]

    # a titled row above the columns: text (white) over every column, the columns start below it
    title_h = layout["title_h"]
    assert title_h >= 12
    array = np.asarray(panel)
    for c in cols:
        x0, y0, x1, y1 = c["box"]
        assert y0 == title_h and x1 - x0 >= panels.MIN_COLUMN_W  # 64 px columns scaled up
        title = array[:title_h, x0:x1]
        assert (title.min(axis=2) > 200).sum() > 20, f"no title text over {c['title']!r}"
        # the title stays in its own column: its last pixels are background, not text
        assert (title[:, -panels.PAD:] == panels.BACKGROUND).all()
    # the columns themselves, scaled up without blurring: the ground truth column shows the mask
    gt = _pixels(panel, cols[-1]["box"])
    scale = layout["scale"]
    np.testing.assert_array_equal(gt[::scale, ::scale], PALETTE[mask])
    np.testing.assert_array_equal(_pixels(panel, cols[0]["box"])[::scale, ::scale], image)

    # the panel is as wide as its columns, the legend below them
    assert panel.width == sum(c["box"][2] - c["box"][0] for c in cols) >= 4 * 64
    legend = layout["legend"]
    assert [e["name"] for e in legend] == ["background", "diningtable", "person", "pottedplant",
                                           "uncertain / void (255)"]
    for entry, value in zip(legend, [0, 11, 15, 16, 255]):
        x0, y0, x1, y1 = entry["swatch"]
        assert y0 >= cols[0]["box"][3] and x1 <= panel.width and y1 <= panel.height
        inside = _pixels(panel, (x0 + 1, y0 + 1, x1, y1))  # within the outline
        assert (inside == PALETTE[value]).all(), entry["name"]
    # what is saved is what was drawn
    panel.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size == panel.size


def test_legend_leaves_out_classes_not_shown_and_names_unknown_labels():
    image, pred, _ = _sample(80)
    panel = panels.labels_panel(image, [("pseudo label", np.where(pred == 16, 21, pred).astype(np.uint8))], None, VOC)
    names = [e["name"] for e in panel.info["layout"]["legend"]]
    assert names == ["background", "diningtable", "person", "class 21", "uncertain / void (255)"]
    assert [c["title"] for c in panel.info["layout"]["columns"]] == ["image", "pseudo label"]


def test_a_long_legend_wraps_inside_the_panel():
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % len(VOC)
    panel = panels.labels_panel(image, [("all classes", labels.astype(np.uint8))], None, VOC)
    legend = panel.info["layout"]["legend"]
    assert [e["name"] for e in legend] == VOC
    boxes = [e["swatch"] for e in legend]
    assert len({b[1] for b in boxes}) > 1                       # more than one row
    assert all(0 <= b[0] and b[2] < panel.width and b[3] < panel.height for b in boxes)
    for a, b in zip(boxes, boxes[1:]):                          # left to right, then a new row
        assert (a[1] == b[1] and b[0] > a[2]) or b[1] > a[3]


def test_a_long_title_is_kept_inside_its_column():
    image, pred, mask = _sample(64)
    maps = np.stack([np.ones((64, 64), np.float32) * 0.5] * 4)
    panel = panels.maps_panel(image, maps, [11, 15, 16, 20], mask, VOC)
    cols = panel.info["layout"]["columns"]
    assert cols[1]["title"] == "maps: diningtable, person, pottedplant, tvmonitor"
    array = np.asarray(panel)
    for c in cols:
        x0, _, x1, _ = c["box"]
        assert (array[:panel.info["layout"]["title_h"], x1 - panels.PAD:x1] == panels.BACKGROUND).all()


@pytest.mark.parametrize("size, mask", [(64, True), (64, False), (300, True)])
def test_maps_panel_has_a_colour_bar_that_fits(size, mask):
    image, _, gt = _sample(size)
    maps = np.linspace(0, 1, size * size, dtype=np.float32).reshape(1, size, size)
    panel = panels.maps_panel(image, maps, [15], gt if mask else None, VOC)
    layout = panel.info["layout"]
    assert [c["title"] for c in layout["columns"]] == ["image", "maps: person"] + (["ground truth"] if mask else [])
    assert layout["scale"] == (1 if size >= panels.MIN_COLUMN_W else 3)
    assert [e["name"] for e in layout["legend"]] == (["background", "diningtable", "person",
                                                      "uncertain / void (255)"] if mask else [])
    x0, y0, x1, y1 = layout["heat_bar"]
    assert 48 <= x1 - x0 and x1 < panel.width and y1 <= panel.height and y0 >= layout["columns"][0]["box"][3]
    bar = np.asarray(panel)[y0 + 1, x0:x1]
    np.testing.assert_array_equal(bar[0], images.colourise(np.float32(0)))
    np.testing.assert_array_equal(bar[-1], images.colourise(np.float32(1)))


def test_heat_colours_stay_within_one_level_of_the_hand_written_ramp():
    """The values the hand-written heat map gave: the stops linearly interpolated, truncated to uint8;
    matplotlib's colormap looks them up in a 1024-entry table instead."""
    values = np.concatenate([np.linspace(0, 1, 100_001, dtype=np.float32), [-0.5, 1.5]])
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 128], [255, 255, 0], [255, 0, 0]], np.float32)
    pos = np.clip(values, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[:, None]
    old = (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)
    new = images.colourise(values)
    assert new.dtype == np.uint8 and new.shape == old.shape
    assert np.abs(new.astype(int) - old).max() <= 1
    np.testing.assert_array_equal(new[[0, -3, -2, -1]], old[[0, -3, -2, -1]])   # both ends, and clipped values
    np.testing.assert_array_equal(images.colourise(np.float32(0.5)), new[50_000])   # a scalar gives one colour


def test_columns_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        panels.compose([("a", np.zeros((8, 8, 3), np.uint8)), ("b", np.zeros((8, 9, 3), np.uint8))], [])


def test_confusion_matrix_chart_is_readable_for_21_classes(tmp_path):
    m = np.random.default_rng(1).integers(0, 50, (21, 21)) + np.eye(21, dtype=int) * 500
    m[3] = 0  # a class absent from the ground truth
    out = charts.confusion_matrix_chart(m.tolist(), VOC, tmp_path / "c.png", "segmenter: val confusion")
    with Image.open(out) as png:
        assert png.width > 300 and png.height > 300
        assert png.width >= 21 * 30  # room for 21 names
    with pytest.raises(ValueError, match="square"):
        charts.confusion_matrix_chart([[1, 2, 3], [4, 5, 6]], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        charts.confusion_matrix_chart([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_per_class_iou_chart_takes_classes_without_an_iou(tmp_path):
    # wsss.scoring.metrics.summary writes None for a class in neither ground truth nor prediction
    out = charts.per_class_iou_chart({"background": 80.0, "cat": None, "dog": 12.5}, tmp_path / "iou.png")
    with Image.open(out) as png:
        assert png.width >= 300 and png.height >= 300
    with pytest.raises(ValueError, match="empty"):
        charts.per_class_iou_chart({}, tmp_path / "empty.png")
