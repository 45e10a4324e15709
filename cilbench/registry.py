"""Generic name -> object registry with lazy discovery of built-ins and plug-ins.

Built-ins register themselves with a decorator when their module is imported; the registry imports
every module of its built-in package the first time a name is looked up, then loads the entry-point
group so third-party packages can add names without touching cilbench.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from cilbench.errors import RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names to registered objects (strategy classes, stream builders, ...)."""

    def __init__(self, kind: str, package: str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._package = package
        self._group = entry_point_group
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`; a second use of a name fails."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(
                    f"{self.kind} {name!r} is registered twice "
                    f"({_where(self._items[name])} and {_where(obj)}); names must be unique."
                )
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as `name`, or an error listing the names and a near match."""
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Available: {', '.join(sorted(self._items))}."
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if self._package is not None:
            package = importlib.import_module(self._package)
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{module.name}")
        if self._group is not None:
            for entry_point in importlib.metadata.entry_points(group=self._group):
                entry_point.load()  # the module registers itself on import


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
