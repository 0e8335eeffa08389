"""The optimiser name table (torch-free): every name a user can pick, and the level optimiser behind it.

``OPTIMIZERS[name]`` is a *level optimiser* (`DiffRegLogic.registration.levels`):
an object whose ``run(ctx, level, index, x, steps)`` optimises a batch of poses
on one pyramid level and returns a `LevelResult`. The command line tool, the
Slicer panel and validation read the names from here; a new optimiser is one
``OPTIMIZERS.register(name, level_optimiser)`` call, not a new branch in the
registration loop. (The CLI builds its choices when its parser is built and
the panel when `DiffRegLogic.mrml.settings` is imported: register plug-ins
before that, e.g. at the import of the plug-in's package.)

* gradient family (``gd``, ``gdm``, ``gddm``, ``adam``): steps of
  `DiffRegLogic.registration.steps` on the autograd gradient of -similarity;
* ``lm``: Levenberg-Marquardt on the similarity's residual, with the DRR
  Jacobian of `DiffRegLogic.drr.jacobian`;
* gradient-free baselines (``powell``, ``nelder-mead`` from scipy, ``cma``
  CMA-ES), one start after the other.
"""

from __future__ import annotations

from ..registry import Registry

GRADIENT_OPTIMIZERS = ("gd", "gdm", "gddm", "adam")
"""The gradient family (the four the seed paper compares)."""
BASELINE_OPTIMIZERS = ("powell", "nelder-mead", "cma")
"""Gradient-free baselines: they run the starts of a batch one after the other."""

_LEVELS = "DiffRegLogic.registration.levels"
_BASELINES = "DiffRegLogic.registration.baselines"

OPTIMIZERS = Registry("optimiser", {
    "adam": f"{_LEVELS}:ADAM",
    "lm": f"{_LEVELS}:LM",
    "gddm": f"{_LEVELS}:GDDM",
    "gdm": f"{_LEVELS}:GDM",
    "gd": f"{_LEVELS}:GD",
    "powell": f"{_BASELINES}:POWELL",
    "nelder-mead": f"{_BASELINES}:NELDER_MEAD",
    "cma": f"{_BASELINES}:CMA",
}, {
    "adam": "Adam on the gradient of -similarity (default)",
    "gd": "gradient descent",
    "gdm": "gradient descent with heavy-ball momentum",
    "gddm": "gradient descent with damped momentum",
    "lm": "Levenberg-Marquardt on the similarity's residual",
    "powell": "Powell's method (scipy), gradient-free",
    "nelder-mead": "Nelder-Mead simplex (scipy), gradient-free",
    "cma": "CMA-ES (cma package), gradient-free",
})
"""Optimiser name -> level optimiser (see the module docstring)."""
