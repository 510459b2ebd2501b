"""One small registry for every "pick an implementation by name" in invismap (as timm does for its models).

A :class:`Registry` maps names to implementations of one idea: map sources, dataset importers, distillation
and predictor losses, alignment estimators, detector checkpoint kinds. Code registers with a decorator
(or a ``"module:attribute"`` string, imported on first use so that one broken optional module does not
break the others), looks up with :meth:`Registry.get`, and an unknown name is one clear error listing the
known ones. Tests are parametrized over :meth:`Registry.names`, so a new entry is tested the moment it
is registered.

Example:
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side):
    ...     return side * side
    >>> shapes.get("square")(3)
    9
    >>> shapes.names()
    ['square']
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    invismap.errors.InvismapError: unknown shape 'circle' (known: square)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from invismap.errors import InvismapError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one idea.

    Args:
        what: what an entry is, for messages ("map source", "dataset format").
        lazy: ``{name: "module:attribute"}`` entries imported when first asked for.
        modules: modules that register entries when imported; imported before a lookup misses.
        hint: appended to the unknown-name message (e.g. an example of a valid spec).
    """

    def __init__(self, what: str, lazy: dict[str, str] | None = None, modules: tuple[str, ...] = (),
                 hint: str = ""):
        self.what, self.hint, self.modules = what, hint, modules
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (a name can be taken once)."""

        def deco(obj: T) -> T:
            if name in self._entries or name in self._lazy:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The implementation named ``name``; an unknown name raises :class:`InvismapError` listing them."""
        if name not in self._entries and name in self._lazy:
            module, attribute = self._lazy.pop(name).split(":")
            self._entries[name] = getattr(importlib.import_module(module), attribute)
        if name not in self._entries:
            self._import_modules()
        if name not in self._entries:
            hint = f"; {self.hint}" if self.hint else ""
            raise InvismapError(f"unknown {self.what} '{name}' (known: {', '.join(self.names())}{hint})")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, in registration order (lazy entries too)."""
        self._import_modules()
        return [*self._entries, *(n for n in self._lazy if n not in self._entries)]

    def _import_modules(self) -> None:
        for module in self.modules:
            importlib.import_module(module)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names())})"


__all__ = ["Registry"]
