"""Names of a package imported on first use (PEP 562), so that importing a package costs nothing.

Each subpackage's ``__init__`` lists which submodule defines each public
name; the submodule is imported when the name is first looked up. This keeps
``import DiffRegLogic.registration.options`` or ``diffreg --help`` from
loading torch, numba or VTK, while ``from DiffRegLogic.geometry import
Detector`` works as if the package had imported everything.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.util import find_spec
from typing import Callable


def lazy_exports(package: str, modules: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, given ``{".submodule": "name1 name2 ...", ...}``.

    Returns the functions a package assigns to its own ``__getattr__`` and
    ``__dir__``; ``__all__`` is then ``list(table)``.
    """
    table = {name: module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str):
        module = table.get(name)
        if module is not None:
            return getattr(import_module(module, package), name)
        if not name.startswith("__") and find_spec(f"{package}.{name}") is not None:
            return import_module(f"{package}.{name}")  # a submodule, as if the package had imported it
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    __getattr__.table = table  # type: ignore[attr-defined]
    return __getattr__, __dir__
