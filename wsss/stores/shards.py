"""Packed per-image records: Parquet shards written into a directory that appears atomically.

Stages store thousands of per-image arrays this way (maps, labels) instead of one file each. Each
shard holds `shard_size` records in Parquet row groups of ROW_GROUP records, and records are
written and read one row group at a time: what a stage holds of a store is ROW_GROUP records
(twice: as Arrow and as Python rows), not a whole shard (a shard of VOC-size maps is ~70 MB).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from wsss.config.errors import StageError
from wsss.stores.atomic import atomic_file, atomic_path


ROW_GROUP = 16   # records per Parquet row group: the unit written and read


class ShardError(StageError, ValueError):
    """A shard that cannot be read as this store's rows; the message names the file."""

    kind = "data error"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_part(rows: Iterable[dict], schema: pa.Schema, out_dir: str | Path, index: int) -> int:
    """Shard `index` of a store being written chunk by chunk (wsss/scaleout/) into an existing
    (temporary) folder: the same bytes `write` gives that shard, under a temporary name until
    complete. Returns the row count."""
    rows, count = iter(rows), 0
    with atomic_file(Path(out_dir) / shard_name(index)) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:   # row groups as `write` makes them
            while group := list(itertools.islice(rows, ROW_GROUP)):
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                count += len(group)
    return count


def write(rows: Iterable[dict], schema: pa.Schema, out_dir: str | Path, shard_size: int) -> int:
    """Write dict rows (keys = schema names) in shards of `shard_size`; returns the row count."""
    rows, count, end = iter(rows), 0, object()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for shard in itertools.count():   # each shard as write_part writes it: one row group at a time
            first = next(rows, end)
            if first is end:
                break
            count += write_part(itertools.chain([first], itertools.islice(rows, shard_size - 1)), schema, tmp, shard)
    return count


def read(in_dir: str | Path) -> Iterator[dict]:
    """The rows of every shard in order, one row group at a time."""
    for shard in _shards(in_dir):
        with _readable(shard, lambda: pq.ParquetFile(shard)) as parquet:
            for group in range(parquet.num_row_groups):
                yield from _readable(shard, lambda: parquet.read_row_group(group).to_pylist())


def _readable(shard: Path, read):
    """read(), with a shard that is truncated, overwritten or not Parquet named in a ShardError."""
    try:
        return read()
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{shard}: not a readable Parquet shard ({exc})") from None


def _shards(in_dir: str | Path) -> list[Path]:
    shards = sorted(Path(in_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no shards (run the stage that writes them first)")
    return shards


def index(in_dir: str | Path) -> list[tuple[str, list[str]]]:
    """(absolute shard path, its ids in stored order) per shard: what a chunk needs to find its rows."""
    return [(str(s.resolve()), pq.read_table(s, columns=["id"]).column("id").to_pylist()) for s in _shards(in_dir)]


def read_ids(sources: list[str], ids: list[str]) -> Iterator[dict]:
    """The rows of `ids`, in that order, from the shard files `sources` (paths from `index`)."""
    wanted, found = set(ids), {}
    for source in sources:
        for row in pq.read_table(source).to_pylist():
            if row["id"] in wanted:
                found[row["id"]] = row
    missing = [i for i in ids if i not in found]
    if missing:
        raise FileNotFoundError(f"{sources}: no rows for ids {missing[:5]}")
    return (found[i] for i in ids)
