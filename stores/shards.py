"""Packed per-image records: Parquet shards written into a directory that appears atomically.

Stages store thousands of per-image arrays this way (maps, labels) instead of one file each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from stores.atomic import atomic_path


def write(rows: Iterable[dict], schema: pa.Schema, out_dir: str | Path, shard_size: int) -> int:
    """Write dict rows (keys = schema names) in shards of `shard_size`; returns the row count."""
    count, shard, batch = 0, 0, []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for row in rows:
            batch.append(row)
            count += 1
            if len(batch) >= shard_size:
                pq.write_table(pa.Table.from_pylist(batch, schema=schema), tmp / f"part-{shard:05d}.parquet",
                               compression="zstd")
                shard, batch = shard + 1, []
        if batch:
            pq.write_table(pa.Table.from_pylist(batch, schema=schema), tmp / f"part-{shard:05d}.parquet",
                           compression="zstd")
    return count


def read(in_dir: str | Path) -> Iterator[dict]:
    shards = sorted(Path(in_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no shards (run the stage that writes them first)")
    for shard in shards:
        yield from pq.read_table(shard).to_pylist()
