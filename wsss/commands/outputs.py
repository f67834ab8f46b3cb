"""Output folders of the user commands: replaced whole and atomically, never over someone's files.

A command (`predict`, `label-pngs`) writes its whole output folder OUT anew in a temporary sibling
and renames it onto OUT (wsss.stores.atomic.atomic_path), so an interrupted run leaves the old OUT
intact. Replacing OUT deletes whatever was in it, so before any work, and again just before the
rename, `replacing` refuses:

- an OUT equal to or inside an input folder, or an input folder inside OUT (OUT's replacement
  would delete the inputs), and an OUT that holds the current folder; `--overwrite` does not
  lift these;
- an OUT that is a file or a symbolic link;
- an existing OUT that holds anything the same command did not write, unless `overwrite`.

What a command wrote is recorded in OUT itself, in MANIFEST (`.wsss-output.json`): the command's
name and every file it wrote with its SHA-256. A file that is not listed, a listed file whose
bytes changed since (a user edited it), an extra folder or link, and everything in an OUT without
a manifest or with another command's manifest count as foreign. So re-running a command into its
own earlier output replaces it, and a folder that also holds a user's file is left alone.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from wsss.stores.atomic import atomic_path, file_digest

MANIFEST = ".wsss-output.json"


class OutputError(ValueError):
    """The output folder cannot be written without losing someone's files; the message says why."""


def file_hashes(folder: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every regular file under `folder`, the manifest excepted."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST and path.is_file() and not path.is_symlink():
            out[rel] = file_digest(path, "sha256")
    return out


def read_manifest(out_dir: Path) -> dict | None:
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
    return manifest if ok else None


def write_manifest(out_dir: Path, command: str) -> None:
    manifest = {"command": command, "files": file_hashes(out_dir)}
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def foreign_entries(out_dir: str | Path, command: str) -> list[str]:
    """Entries of `out_dir` (relative posix paths, sorted) that `command` did not write as they are."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    same = manifest is not None and manifest.get("command") == command
    written = manifest["files"] if same else {}
    expected_dirs = {p.as_posix() for rel in written for p in Path(rel).parents if p != Path(".")}
    foreign = []
    for root, dirs, files in os.walk(out_dir):
        for name in [*dirs, *files]:
            path = Path(root) / name
            rel = path.relative_to(out_dir).as_posix()
            if rel == MANIFEST and same:
                continue
            if path.is_symlink():
                foreign.append(rel)
            elif path.is_dir():
                if rel not in expected_dirs:
                    foreign.append(rel)
            elif rel not in written or file_digest(path, "sha256") != written[rel]:
                foreign.append(rel)
    return sorted(foreign)


def check(out_dir: str | Path, command: str, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> None:
    """Raise OutputError where writing `command`'s output to `out_dir` would lose files."""
    out_dir = Path(out_dir)
    out = out_dir.resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if out == inp or inp in out.parents:
            raise OutputError(f"OUT_DIR {out_dir} is inside the input folder {given}: "
                              "choose an output folder outside it")
        if out in inp.parents:
            raise OutputError(f"the input folder {given} is inside OUT_DIR {out_dir}: replacing OUT_DIR "
                              "would delete it; choose an output folder outside it")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise OutputError(f"OUT_DIR {out_dir} holds the current folder: choose a folder of its own")
    if out_dir.is_symlink():
        raise OutputError(f"OUT_DIR {out_dir} is a symbolic link: give the folder it points to")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"OUT_DIR {out_dir} is a file, not a folder")
    if overwrite or not out_dir.exists():
        return
    foreign = foreign_entries(out_dir, command)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"OUT_DIR {out_dir} holds files that `{command}` did not write "
                          f"({foreign[0]}{more}): choose another folder, move them away, "
                          "or pass --overwrite to replace the folder and everything in it")


@contextlib.contextmanager
def replacing(out_dir: str | Path, command: str, inputs: Iterable[str | Path] = (),
              overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; it replaces `out_dir`, with a manifest, if the block succeeds.

    `check` runs before the block and again right before the rename (files may have appeared in
    OUT meanwhile); a refusal or an error leaves OUT as it was.
    """
    inputs = list(inputs)
    check(out_dir, command, inputs, overwrite)
    with atomic_path(out_dir) as tmp:
        yield tmp
        tmp.mkdir(parents=True, exist_ok=True)
        write_manifest(tmp, command)
        check(out_dir, command, inputs, overwrite)
