"""Packed per-image records: Parquet shards written into a directory that appears atomically.

Stages store thousands of per-image arrays this way (maps, labels) instead of one file each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from stores.atomic import atomic_file, atomic_path


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")


def write_part(rows: Iterable[dict], schema: pa.Schema, out_dir: str | Path, index: int) -> int:
    """Shard `index` of a store being written chunk by chunk (scaleout/) into an existing
    (temporary) folder: the same bytes `write` gives that shard, under a temporary name until
    complete. Returns the row count."""
    rows = list(rows)
    with atomic_file(Path(out_dir) / shard_name(index)) as tmp:
        _write_table(rows, schema, tmp)
    return len(rows)


def write(rows: Iterable[dict], schema: pa.Schema, out_dir: str | Path, shard_size: int) -> int:
    """Write dict rows (keys = schema names) in shards of `shard_size`; returns the row count."""
    count, shard, batch = 0, 0, []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for row in rows:
            batch.append(row)
            count += 1
            if len(batch) >= shard_size:
                _write_table(batch, schema, tmp / shard_name(shard))
                shard, batch = shard + 1, []
        if batch:
            _write_table(batch, schema, tmp / shard_name(shard))
    return count


def _shards(in_dir: str | Path) -> list[Path]:
    shards = sorted(Path(in_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no shards (run the stage that writes them first)")
    return shards


def read(in_dir: str | Path) -> Iterator[dict]:
    for shard in _shards(in_dir):
        yield from pq.read_table(shard).to_pylist()


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
