"""Name-to-class lookups, one per kind of part, so new methods plug in without touching callers."""
from __future__ import annotations

from typing import Callable


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str):
        def add(obj):
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str, key: str | None = None) -> Callable:
        if name not in self._items:
            where = f"{key}: " if key else ""
            raise KeyError(f"{where}unknown {self.kind} {name!r}; choose one of {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


BACKBONES = Registry("backbone")
LOCALIZERS = Registry("localizer")
HEADS = Registry("head")
LOSSES = Registry("loss")
