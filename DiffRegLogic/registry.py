"""Name tables for the engine's plug points, resolved on first use (torch-free).

A `Registry` maps a name (``"zncc"``, ``"adam"``, ...) to an object given as
the object itself or as a ``"package.module:attribute"`` reference that is
imported when the name is first looked up. The command line tool and the
Slicer panel list the names without importing torch; the engine looks the
objects up; a plug-in adds its own entry with `Registry.register`, and every
list of choices (CLI flags, panel combo boxes, validation messages) follows.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Iterator, Mapping

from .errors import InputError


class Registry(Mapping[str, Any]):
    """Names -> objects for one kind of plug-in (``kind`` names it in error messages)."""

    def __init__(self, kind: str, entries: Mapping[str, Any] | None = None,
                 descriptions: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._descriptions: dict[str, str] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry, (descriptions or {}).get(name, ""))

    def register(self, name: str, entry: Any, description: str = "", *, replace: bool = False) -> None:
        """Add ``name`` -> ``entry`` (an object or a ``"module:attribute"`` reference)."""
        if not isinstance(name, str) or not name:
            raise InputError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise InputError(f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        self._entries[name] = entry
        self._descriptions[name] = description

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in's entry, e.g. in a test)."""
        self._entries.pop(name, None)
        self._descriptions.pop(name, None)

    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attribute = entry.partition(":")
            entry = getattr(import_module(module), attribute)
        return entry

    def lookup(self, name: str) -> Any:
        """The object called ``name``; InputError listing the valid names otherwise."""
        if name not in self._entries:
            raise InputError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries))}")
        return self[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def description(self, name: str) -> str:
        return self._descriptions.get(name, "")

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
