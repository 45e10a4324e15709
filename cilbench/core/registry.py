"""Generic name -> object registry with lazy discovery of built-ins and plug-ins.

Built-ins register themselves with a decorator when their module is imported; the registry imports
every module of its built-in package the first time a name is looked up, then loads the entry-point
group so third-party packages can add names without touching cilbench.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
from collections.abc import Callable
from typing import Generic, TypeVar

from cilbench.core.errors import RegistryError, did_you_mean

T = TypeVar("T")
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
"""Registered names are kebab-case: they become folder and file names (`OUT/<stream>/<strategy>-
...`), so `../`, `/` or other characters would write outside the output folder."""


class Registry(Generic[T]):
    """Maps kebab-case names to registered objects (strategy classes, stream builders, ...)."""

    def __init__(self, kind: str, package: str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._package = package
        self._group = entry_point_group
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`.

        Registering the same object again, or an equal one (an equal spec, or a class or function
        of the same module and qualified name: a re-run notebook cell, a reloaded module), is
        allowed and the newer one is kept; a different object under a taken name is an error.
        """

        check_name(name, self.kind)

        def decorator(obj: T) -> T:
            if name in self._items and not _same(self._items[name], obj):
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered as {_where(self._items[name])}; "
                    f"{_where(obj)} is a different one. Choose another name, or call "
                    f"unregister({name!r}) first to replace it."
                )
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove `name` (for tests and notebooks that replace a registration)."""
        if name not in self._items:
            raise RegistryError(
                f"Cannot unregister {self.kind} {name!r}: it is not registered."
                + did_you_mean(name, self._items)
            )
        del self._items[name]

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


def check_name(name: object, kind: str) -> None:
    """Refuse a name that is not kebab-case (lower-case letters and digits joined by '-')."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(
            f"Cannot register {kind} {name!r}: names must be kebab-case (lower-case letters and "
            "digits joined by single '-', e.g. 'my-strategy'); they become folder names."
        )


def _where(obj: object) -> str:
    if not hasattr(obj, "__qualname__"):
        return repr(obj)
    return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"


def _same(old: object, new: object) -> bool:
    """Whether `new` re-registers `old`: equal, or the same definition (module, qualified name)."""
    if hasattr(old, "__qualname__") and hasattr(new, "__qualname__"):
        return _where(old) == _where(new)
    return bool(old == new)
