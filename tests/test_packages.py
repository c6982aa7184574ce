"""Every name a package lists in __all__ can be imported from it (lazy maps included)."""

from __future__ import annotations

import importlib
import pkgutil

import simclr


def test_every_name_in_every_all_resolves():
    packages = [simclr.__name__] + [f"simclr.{module.name}" for module in pkgutil.iter_modules(simclr.__path__)
                                    if module.ispkg]
    checked = 0
    for name in packages:
        package = importlib.import_module(name)
        for exported in getattr(package, "__all__", ()):
            assert getattr(package, exported) is not None, f"{name}.{exported}"
            checked += 1
    assert checked >= 10
