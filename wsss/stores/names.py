"""Image ids become file names (ID.png, ID.json): one check that an id stays a plain name inside
its folder, whichever store or listing it came from."""
from __future__ import annotations

from wsss.config.errors import StageError


class UnsafeIdError(StageError, ValueError):
    """An id that would name a file outside its folder (or none); the message names it and its source."""

    kind = "data error"


def file_name(image_id, source) -> str:
    """`image_id` where it is a plain file name; else UnsafeIdError naming it and `source`."""
    if not isinstance(image_id, str) or image_id in ("", ".", "..") or any(c in image_id for c in "/\\\0"):
        raise UnsafeIdError(f"{source}: image id {image_id!r} cannot be a file name "
                            "(empty, '.', '..', or holding '/', '\\' or NUL)")
    return image_id
