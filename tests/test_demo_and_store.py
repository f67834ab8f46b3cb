import numpy as np
import pytest

from wsss.dataset import demo
from wsss.dataset import voc
from wsss.stores import mapstore
from wsss.stores.atomic import atomic_path, write_json
from wsss.scoring.sweep import ThresholdSweep, maps_to_labels


def test_demo_is_deterministic_and_multilabel(tmp_path):
    demo.generate(tmp_path / "a", seed=3, n_train=6, n_val=2, image_size=64)
    demo.generate(tmp_path / "b", seed=3, n_train=6, n_val=2, image_size=64)
    for sub in ("JPEGImages/demo_train_00004.jpg", "SegmentationClass/demo_train_00004.png"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    table, classes = voc.scan(tmp_path / "a", ["train", "val"])
    rows = table.to_pylist()
    assert classes == demo.CLASSES and len(rows) == 8
    assert any(len(r["tags"]) > 1 for r in rows)


def test_demo_marks_are_small_parts_of_bodies():
    rng = np.random.default_rng(0)
    image, mask = demo.render_scene(rng, 128)
    for cls in set(np.unique(mask)) - {0, 255}:
        colour = demo.MARK_COLOURS[cls - 1]
        near = np.abs(image.astype(float) - colour).sum(-1) < 60
        body = mask == cls
        mark_fraction = (near & body).sum() / body.sum()
        assert mark_fraction < 0.25  # the discriminative part is a small share of the object


def test_mapstore_roundtrip_and_atomic_replace(tmp_path):
    rng = np.random.default_rng(0)
    records = [(f"im{i}", [1, 3][: i % 2 + 1], rng.random((i % 2 + 1, 7, 9)).astype(np.float32)) for i in range(5)]
    assert mapstore.write(iter(records), tmp_path / "maps", shard_size=2) == 5
    assert len(list((tmp_path / "maps").glob("part-*.parquet"))) == 3
    back = list(mapstore.read(tmp_path / "maps"))
    for (i, c, m), (i2, c2, m2) in zip(records, back):
        assert i == i2 and c == c2 and np.abs(m - m2).max() <= 0.5 / 255 + 1e-6

    def broken():
        yield records[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        mapstore.write(broken(), tmp_path / "maps", shard_size=2)
    assert len(list(mapstore.read(tmp_path / "maps"))) == 5  # the complete old version is intact


def test_atomic_write_removes_what_a_killed_writer_of_that_path_left(tmp_path):
    leftover = tmp_path / ".classifier.json.abc123"  # SIGKILL mid-write
    leftover.mkdir()
    (leftover / "classifier.json").write_text("{half")
    replaced = tmp_path / ".maps.x7_k2q9a"  # killed between the two renames of a directory replace
    (replaced / "maps").mkdir(parents=True)
    (replaced / "maps.old").mkdir()
    keep = {tmp_path / ".other" / "classifier.json": "x",  # not a temporary of classifier.json
            tmp_path / ".classifier.json.mine" / "notes.txt": "x",  # holds something atomic_path never writes
            tmp_path / ".classifier.json.old.abc" / "classifier.json": "x",  # '.' is not in tempfile's names
            tmp_path / ".classifier.jsonx.abc123" / "classifier.jsonx": "x",
            tmp_path / ".classifier.json.file": "a file, not a folder"}
    for path, text in keep.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)

    write_json({"ok": 1}, tmp_path / "classifier.json")
    assert not leftover.exists() and replaced.exists()  # only temporaries of the path being written
    with atomic_path(tmp_path / "maps") as tmp:
        tmp.mkdir()
    assert not replaced.exists()
    assert all(path.read_text() == text for path, text in keep.items())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".classifier", ".maps"))) == [
        ".classifier.json.file", ".classifier.json.mine", ".classifier.json.old.abc", ".classifier.jsonx.abc123"]


def test_atomic_write_leaves_a_live_writers_temporary_alone(tmp_path):
    with atomic_path(tmp_path / "a.json") as first:
        first.write_text("1")
        write_json(2, tmp_path / "a.json")  # another writer of the same path meanwhile
        assert first.exists()
    assert (tmp_path / "a.json").read_text() == "1"


def test_threshold_sweep_finds_the_separating_threshold():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 2
    maps = np.where(mask == 2, 0.8, 0.3).astype(np.float32)[None]
    labels = maps_to_labels(maps, [2], 0.5)
    np.testing.assert_array_equal(labels, mask)
    sweep = ThresholdSweep([0.2, 0.5, 0.9], 3)
    sweep.add(maps, [2], mask)
    result = sweep.result(["bg", "a", "b"])
    assert result["threshold"] == 0.5 and result["miou"] == 100.0 and not result["best_at_sweep_edge"]


@pytest.mark.parametrize("classes", [[], [3], [1, 4, 2]])
def test_threshold_sweep_counts_match_scoring_each_threshold(classes):
    from wsss.scoring.metrics import confusion

    rng = np.random.default_rng(len(classes))
    # uint8-quantised maps, as stored: many exact ties with the thresholds and between classes
    maps = (rng.integers(0, 256, (len(classes), 30, 40)) / 255).astype(np.float32)
    maps[:, :5] = 0.5
    mask = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    mask[-3:] = 255
    values = [0.05 * i for i in range(1, 20)]
    sweep = ThresholdSweep(values, 5)
    sweep.add(maps, classes, mask)
    sweep.add(maps[:, ::-1].copy(), classes, mask)
    for i, t in enumerate(values):
        expected = confusion(mask, maps_to_labels(maps, classes, t), 5)
        expected += confusion(mask, maps_to_labels(maps[:, ::-1], classes, t), 5)
        np.testing.assert_array_equal(sweep.conf[i], expected)
