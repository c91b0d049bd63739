"""Package namespaces whose names are imported on first use, so that importing a package (the
command line, the pipeline, the writers' table) does not load torch, MONAI or highdicom until needed."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module holding it (absolute, or relative to ``package`` when it
            starts with ``.``).
        namespace: the package's ``globals()``; a loaded name is cached there.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = exports[name]
            value = getattr(importlib.import_module(module, package if module.startswith(".") else None), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
