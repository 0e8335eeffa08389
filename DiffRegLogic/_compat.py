"""Module paths of DiffReg 0.1 that moved into subpackages keep working (``import DiffRegLogic.io`` and the like).

`MOVED` maps each old module to where its names live now: one module (the
old path becomes an alias of it) or several (the old path becomes a module
that re-exports their public names). A finder on ``sys.meta_path`` resolves
the old paths on first import; nothing is imported before that.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MOVED: dict[str, tuple[str, ...]] = {
    "io": ("volume.io", "geometry.files", "xray.files"),
    "phantoms": ("volume.phantoms",),
    "materials": ("physics.calibration", "physics.materials", "volume.hu"),
    "realism": ("physics.realism", "drr.radiograph"),
    "optimizers": ("registration.steps", "registration.optimizers"),
    "settings": ("mrml.settings",),
    "selftest": ("mrml.selftest",),
    "dependencies": ("mrml.dependencies",),
}
"""Old module (under DiffRegLogic) -> the new modules holding its names."""

PACKAGE = __name__.rpartition(".")[0]


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec):
        modules = [importlib.import_module(f"{PACKAGE}.{t}") for t in self.targets]
        if len(modules) == 1:
            return _Alias(modules[0], spec.name)
        merged = types.ModuleType(spec.name, f"Moved: the names of {spec.name} live in "
                                             + ", ".join(m.__name__ for m in modules))
        for module in modules:
            names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("__")]
            for name in names:
                if hasattr(module, name) and not name.startswith("__"):
                    setattr(merged, name, getattr(module, name))
        return merged

    def exec_module(self, module) -> None:
        pass


class _Alias(types.ModuleType):
    """An old module path whose attributes are the new module's (reads and writes go through)."""

    def __init__(self, target: types.ModuleType, name: str) -> None:
        super().__init__(name, target.__doc__)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "_target"), name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("__") and name.endswith("__"):  # the import system's bookkeeping
            object.__setattr__(self, name, value)
        else:
            setattr(object.__getattribute__(self, "_target"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_target"), name)

    def __dir__(self):
        return dir(object.__getattribute__(self, "_target"))


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of `MOVED`."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != PACKAGE or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader(MOVED[name]))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
