"""The one registry pattern used for models, slide readers and benchmark backends.

    READERS = Registry("slide reader")

    @READERS.register("tifffile")
    class TifffileReader: ...

    READERS.get("tifffile")      # the class; an unknown name raises UnknownNameError listing the valid names
    READERS.names("*slide*")     # registered names matching a glob pattern, in registration order
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from histo_bench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by a ``register(name)`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self._items) or '(none)'}") \
                from None

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._items if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items
