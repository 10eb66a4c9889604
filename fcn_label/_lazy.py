"""Attributes imported on first use (PEP 562), so that importing a package does not import torch."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, where: dict[str, str], namespace: dict):
    """``__getattr__`` and ``__dir__`` for ``package``: ``where`` maps a name to the module holding it."""

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
