"""Atomic writes: every artifact appears whole or not at all."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what an atomic_path of `path` killed mid-write (SIGKILL, power loss) left behind:
    sibling folders `.NAME.XXXX` (tempfile's alphabet) holding nothing but NAME and NAME.old (the
    previous version, moved aside while a directory is replaced). A folder that another process is
    writing right now is locked (see atomic_path) and left alone; nothing else is touched."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]+")
    for candidate in path.parent.iterdir():
        if not pattern.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            if not {p.name for p in candidate.iterdir()} <= {path.name, path.name + ".old"}:
                continue
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:  # gone meanwhile, or unreadable: not ours to judge
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            continue
        else:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    Works for files and directories. A directory that already exists at `path` is replaced only
    after the new one is complete. Temporary folders of `path` left by a killed writer are removed
    first. The temporary folder is locked while in use (flock, released by the kernel when the
    process dies), so a concurrent writer of the same path never removes a live one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    lock = os.open(tmp.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = tmp.parent / (path.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
        os.close(lock)


# Files a chunk of a scaled-out stage (wsss/scaleout/) writes into a stage's temporary output folder:
# each under a temporary name, then renamed, so a worker killed mid-chunk leaves no half-written
# file under the real name and a retried chunk overwrites its own files cleanly. What a killed
# writer left under a temporary name is removed (remove_partials) before the folder is renamed.
PARTIAL = ".partial-"   # in the temporary name: `.NAME.partial-<pid>-<random>`
before_rename = None   # tests (wsss/scaleout/engine.py): called with the temporary path once it is written


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary sibling of `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partials(folder: str | Path) -> int:
    """Remove what killed writers left under temporary names in `folder` (recursively); returns the count."""
    gone = 0
    for leftover in Path(folder).rglob(f".*{PARTIAL}*"):
        leftover.unlink(missing_ok=True)
        gone += 1
    return gone


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_parquet(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (md5: DVC's hashes; sha256: output manifests)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
