"""Shards are written and read one row group at a time: a store's reader and writer hold
ROW_GROUP records, not a shard, so a stage's memory does not grow with the shard (or the data set)."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from wsss.stores import labelstore, shards


def _labels(n):
    rng = np.random.default_rng(0)
    return [(f"im{i:03d}", rng.integers(0, 21, (7 + i % 3, 9), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("n, shard_size", [(40, 20), (37, 256), (5, 2), (16, 16)])
def test_row_groups_round_trip(tmp_path, n, shard_size):
    records = _labels(n)
    assert labelstore.write(iter(records), tmp_path / "s", shard_size) == n
    files = sorted((tmp_path / "s").glob("part-*.parquet"))
    assert len(files) == -(-n // shard_size)
    for f in files:
        meta = pq.ParquetFile(f).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert max(sizes) <= shards.ROW_GROUP and sum(sizes) <= shard_size
    back = list(labelstore.read(tmp_path / "s"))
    assert [i for i, _ in back] == [i for i, _ in records]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(back, records))


def test_reader_is_lazy_per_row_group(tmp_path, monkeypatch):
    labelstore.write(iter(_labels(50)), tmp_path / "s", 256)
    seen = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, *a, **k: seen.append(g) or real(self, g, *a, **k))
    rows = shards.read(tmp_path / "s")
    next(rows)
    assert seen == [0]   # the first record costs one row group, not the shard
    assert sum(1 for _ in rows) == 49 and seen == [0, 1, 2, 3]


def test_labels_held_compressed(tmp_path):
    from wsss.dataset.demo import render_scene

    rng = np.random.default_rng(0)
    records = [(f"im{i}", render_scene(rng, 128)[1]) for i in range(6)]   # demo masks: blobs, 255 borders
    labelstore.write(iter(records), tmp_path / "s", 4)
    held = labelstore.read_dict(tmp_path / "s")
    assert list(held) == [i for i, _ in records] and len(held) == 6 and "im3" in held and "nope" not in held
    for image_id, labels in records:
        got = held[image_id]
        assert got.dtype == np.uint8 and np.array_equal(got, labels)
        got[0, 0] = 7   # a fresh, writable array: the store is untouched
    assert np.array_equal(held["im0"], records[0][1])
    raw = sum(labels.nbytes for _, labels in records)
    assert held.nbytes * 5 < raw, (held.nbytes, raw)


def test_maps_held_compressed(tmp_path):
    from wsss.stores import mapstore

    yy, xx = np.mgrid[0:60, 0:80] / 80.0
    records = [(f"im{i}", [1 + i % 3], np.clip(np.sin(xx * (i + 1)) * np.cos(yy), 0, 1)[None]) for i in range(5)]
    mapstore.write(iter(records), tmp_path / "m", 2)
    held = mapstore.read_dict(tmp_path / "m")
    assert list(held) == [i for i, _, _ in records]
    for (image_id, classes, _), (_, _, stored) in zip(records, mapstore.read(tmp_path / "m", as_uint8=True)):
        got_classes, got = held[image_id]
        assert got_classes == classes and got.dtype == np.uint8 and np.array_equal(got, stored)
    assert held.nbytes < sum(m.nbytes for _, _, m in mapstore.read(tmp_path / "m", as_uint8=True))
