"""One way to register things by name: models, datasets, explainers, matchers, recipes, ...

A :class:`Registry` is a read-only mapping ``name -> entry`` plus per-entry metadata (an
explainer's resolution and differentiability, a matcher's options), filled by
:meth:`Registry.register` (as a decorator or a call).  Looking up an unknown name raises
:class:`UnknownName`, a ``ValueError`` (and ``KeyError``) whose message lists the known names
and the closest matches, so every registry fails the same helpful way.  A leaf module: it
imports nothing from the project.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_DECORATE = object()  # register(name) without an entry: a decorator (None is a valid entry)

__all__ = ["Registry", "UnknownName"]


class UnknownName(ValueError, KeyError):
    """An unknown registry name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``kind`` names it in errors), each with a metadata dict."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, entry: Any = _DECORATE, **meta: Any):
        """Add ``entry`` under ``name`` with ``meta``; without ``entry``, a decorator that adds
        the decorated object and returns it unchanged.  Re-registering a name replaces it."""
        def add(obj: T) -> T:
            self._entries[name] = obj
            self._meta[name] = dict(meta)
            return obj
        return add if entry is _DECORATE else add(entry)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plugins that register temporarily)."""
        self.check(name)
        del self._entries[name], self._meta[name]

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata ``name`` was registered with (a copy)."""
        self[name]
        return dict(self._meta[name])

    def names(self, **where: Any) -> list[str]:
        """Names in registration order, optionally those whose metadata matches ``where``
        (``EXPLAINERS.names(differentiable=True)``)."""
        return [n for n in self._entries
                if all(self._meta[n].get(k) == v for k, v in where.items())]

    def unknown(self, name: str, context: str = "") -> UnknownName:
        """The standard error for an unknown ``name`` (``context`` is appended to its first
        clause, e.g. ``" in spec 'x:y'"``)."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UnknownName(f"unknown {self.kind} {name!r}{context}{hint}; known: "
                           f"{', '.join(self._entries) or 'none'}")

    def check(self, name: str, context: str = "") -> str:
        """``name`` if registered, else raise :meth:`unknown`."""
        if name not in self._entries:
            raise self.unknown(name, context)
        return name

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

