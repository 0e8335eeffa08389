"""DiffReg engine: differentiable DRRs and 2D/3D CT-to-X-ray registration.

No Qt and no Slicer here; the Slicer module and the command line tool are thin
layers over these modules. The geometry convention is stated once in
`DiffRegLogic.geometry` and the README.

The names below are imported on first use, so that torch-free modules
(`DiffRegLogic.settings`, `DiffRegLogic.errors`) can be imported where torch
is not installed yet (the Slicer module before its dependencies are set up).
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["render", "Detector", "Volume", "HUToMu", "InputError", "__version__"]

_LAZY = {"render": ".drr", "Detector": ".geometry", "Volume": ".volume", "HUToMu": ".volume", "InputError": ".errors"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
