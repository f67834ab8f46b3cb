"""Changes to a workspace that are all-or-nothing: the paths a block may change are set aside
first and put back if it fails (files copied, folders moved: label outputs can be gigabytes)."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def restoring(root: str | Path, paths: list[str], scratch: str | Path):
    """Run the block; if it raises (or is interrupted), `paths` (relative to root) are as they were.

    Folders and links are moved aside into `scratch` before the block (a rename where it shares
    root's file system), files copied; a path that did not exist is removed again."""
    root = Path(root)
    Path(scratch).mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix="undo-", dir=scratch))
    kept: dict[str, Path | None] = {}
    try:
        for i, rel in enumerate(dict.fromkeys(paths)):
            path, copy = root / rel, aside / str(i)
            if path.is_dir() or path.is_symlink():   # a link is kept as a link
                shutil.move(path, copy)
            elif path.exists():
                shutil.copy2(path, copy)
            else:
                copy = None
            kept[rel] = copy
        yield
    except BaseException:
        for rel, copy in kept.items():
            _remove(root / rel)
            if copy is not None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(copy, root / rel)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
