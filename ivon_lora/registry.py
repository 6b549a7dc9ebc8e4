"""One registry type for every kind of named thing: tasks, protocols, judges, prompt formats, metrics, confidence
scores, SFT datasets, built-in and packaged models.

A `Registry` is a read-only mapping name -> item in registration order, plus `register` (a name given twice is
refused: two suites defining one task name would otherwise keep whichever module was read last) and `get`, whose
error names the closest registered name: "Unknown task 'arc_chalenge'. Did you mean 'arc_challenge'? Available:
...". The shape is lm-evaluation-harness's `lm_eval/api/registry.py`, without its global string-keyed namespaces:
each kind is one module-level object beside the things it holds.

A leaf: it imports nothing from the package, so every layer can hold a registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
_MISSING = object()


def unknown_name(kind: str, name: str, available: Iterable[str], listing: str | None = None) -> KeyError:
    """The lookup error of every registry: "Unknown <kind> 'x'. Did you mean 'y'? Available: ..."."""
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return KeyError(f"Unknown {kind} {name!r}.{hint} Available: {listing or ', '.join(available)}")


class Registry(Mapping[str, T], Generic[T]):
    """Named items of one `kind` (the word its errors use: "task", "judge", ...), in registration order.

    `entries`: the initial items, a mapping or (name, item) pairs, registered in order (a repeated name is refused
    as `register` refuses it). Reading is a mapping's (`in`, iteration over names, `items()`, `len`); `registry[name]`
    and `get(name)` raise the did-you-mean KeyError for an unknown name, `get(name, default)` returns the default.
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | Iterable[tuple[str, T]] = ()):
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, item in entries.items() if isinstance(entries, Mapping) else entries:
            self.register(name, item)

    def register(self, name: str, item=_MISSING):
        """Add `item` under `name` and return it; without `item`, a decorator that registers what it decorates."""
        if item is _MISSING:

            def decorator(decorated: T) -> T:
                return self.register(name, decorated)

            return decorator
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"A {self.kind} named {name!r} is already registered")
        self._entries[name] = item
        return item

    def get(self, name: str, default=_MISSING) -> T:
        """The item called `name`; an unknown name raises `unknown_name`'s KeyError unless a default is given."""
        if name in self._entries:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise unknown_name(self.kind, name, self._entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    @contextmanager
    def patched(self, name: str, item: T):
        """`item` registered as `name` inside the with-block (replacing one already there), then the registry as it
        was: for tests that add a fake entry."""
        previous = self._entries.get(name, _MISSING)
        self._entries[name] = item
        try:
            yield item
        finally:
            if previous is _MISSING:
                self._entries.pop(name, None)
            else:
                self._entries[name] = previous
