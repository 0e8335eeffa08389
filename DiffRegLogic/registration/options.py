"""`RegistrationOptions`: every setting of one registration, and `make_options`, the one place they are built.

The command line tool, the Slicer bridge and the experiments all call
`make_options` with the user's settings, so the names, conversions and
checks are the same everywhere; the renders that report a result (NCC/SSIM,
the ``--drr`` file, the panel's DRR) take `RegistrationOptions.render_options`
so they use the renderer settings the registration used. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

PARAMETERIZATIONS = ("se3", "spherical")
"""Pose parameters: se3 (motion of the CT about its centre) or spherical (the seed paper's C-arm model)."""

# Default step sizes at the coarsest level (rotation deg, translation mm) per
# optimiser. Adam's step is about this size; the plain gradient methods
# multiply the gradient of -similarity (per rad and per mm) by it, so their
# values are in deg^2 and mm^2 per unit of similarity. Chosen on the
# phantom (see docs/results.md, robustness experiment).
DEFAULT_STEPS = {
    "adam": (1.0, 2.0),
    "gd": (6.0, 150.0),
    "gdm": (0.6, 15.0),
    "gddm": (6.0, 150.0),
}
BASELINE_SCALE = (5.0, 10.0)
"""One unit of the gradient-free optimisers' search space (rotation deg, translation mm)."""


@dataclass
class RegistrationOptions:
    """Settings of one registration (defaults: Adam on negative ZNCC, Siddon, 4 levels: 1/8, 1/4, 1/2, full size).

    ``similarity`` is a name of `DiffRegLogic.similarity.SIMILARITIES`, a
    `DiffRegLogic.similarity.Measure`, or any callable ``(drr, xray, mask)
    -> (B,)`` (a ``torch.nn.Module`` fits); ``optimizer`` a name of
    `DiffRegLogic.registration.OPTIMIZERS`.

    Convergence of a gradient level: when the best similarity has not
    improved by ``tolerance`` for ``patience`` iterations, the step sizes are
    halved and the search restarts from the best pose; a plateau reached
    after ``max_step_reductions`` halvings ends the level as converged, so
    the search runs at ``max_step_reductions + 1`` step sizes.
    """

    optimizer: str = "adam"
    similarity: Any = "zncc"
    renderer: str = "siddon"
    parameterization: str = "se3"
    levels: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
    max_iterations: int = 150
    step_rotation_deg: float | None = None
    step_translation_mm: float | None = None
    momentum: float = 0.9
    patience: int = 5
    tolerance: float = 1e-4
    max_step_reductions: int = 2
    min_step_deg: float = 0.01
    min_step_mm: float = 0.01
    max_evaluations: int = 1000
    n_starts: int = 1
    start_rotation_deg: float = 10.0
    start_translation_mm: float = 20.0
    seed: int = 0
    step_voxels: float = 1.0
    max_memory_mb: float = 2048.0
    backend: str = "auto"  # renderer backend: auto | fused (CPU, numba) | triton (CUDA) | reference (PyTorch)

    def validate(self) -> None:
        """Raise InputError for any setting that cannot work (names, ranges, LM without a residual)."""
        from ..drr.backends import BACKENDS, RENDERERS
        from .optimizers import OPTIMIZERS

        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimiser {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.renderer not in RENDERERS:
            raise InputError(f"unknown renderer {self.renderer!r}; choose one of {sorted(RENDERERS)}")
        self._validate_similarity()
        if self.parameterization not in PARAMETERIZATIONS:
            raise InputError(f"unknown parameterization {self.parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if not self.levels or any(not (f >= 1) for f in self.levels):
            raise InputError(f"levels must be downsampling factors >= 1 (coarse to fine), got {self.levels}")
        for name in ("max_iterations", "patience", "max_evaluations", "n_starts"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.max_step_reductions) < 0:
            raise InputError(f"max_step_reductions must be 0 or more, got {self.max_step_reductions}")
        for name in ("step_rotation_deg", "step_translation_mm"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise InputError(f"{name} must be positive, got {value}")
        if not (self.step_voxels > 0):
            raise InputError(f"step_voxels must be positive, got {self.step_voxels}")
        if not (self.max_memory_mb > 0):
            raise InputError(f"max_memory_mb must be a positive number of MB, got {self.max_memory_mb}")

    def _validate_similarity(self) -> None:
        from .optimizers import BASELINE_OPTIMIZERS, GRADIENT_OPTIMIZERS, OPTIMIZERS

        builtin = self.optimizer in GRADIENT_OPTIMIZERS + BASELINE_OPTIMIZERS + ("lm",)
        # a plug-in optimiser says itself whether it needs a residual (looking it up may import torch)
        needs_residual = (self.optimizer == "lm" if builtin
                          else bool(getattr(OPTIMIZERS[self.optimizer], "needs_residual", False)))
        if isinstance(self.similarity, str):  # names are checked without importing torch
            from ..similarity.registry import get_residual, get_similarity

            get_similarity(self.similarity)
            if needs_residual:
                get_residual(self.similarity)
            return
        from ..similarity.measure import as_measure

        measure = as_measure(self.similarity)
        if needs_residual:
            measure.require_residual()

    def steps(self) -> tuple[float, float]:
        """(rotation deg, translation mm) step sizes at the coarsest level."""
        rot, trans = DEFAULT_STEPS.get(self.optimizer, (1.0, 2.0))
        return (self.step_rotation_deg or rot, self.step_translation_mm or trans)

    def render_options(self) -> dict:
        """Keyword arguments of `DiffRegLogic.drr.render` that reproduce this registration's DRRs."""
        return {"step_voxels": self.step_voxels, "max_memory_mb": self.max_memory_mb, "backend": self.backend}

    @property
    def similarity_name(self) -> str:
        """The similarity's name (a registry name, or the name of a custom measure)."""
        if isinstance(self.similarity, str):
            return self.similarity
        return str(getattr(self.similarity, "name", None) or getattr(self.similarity, "__name__", None)
                   or type(self.similarity).__name__)

    def summary(self) -> dict:
        """JSON-ready settings (the similarity by name, levels as a list)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["similarity"] = self.similarity_name
        out["levels"] = list(self.levels)
        return out


_INTEGERS = ("max_iterations", "patience", "max_step_reductions", "max_evaluations", "n_starts", "seed")
_FLOATS = ("momentum", "tolerance", "min_step_deg", "min_step_mm", "start_rotation_deg", "start_translation_mm",
           "step_voxels", "max_memory_mb")
_OPTIONAL_FLOATS = ("step_rotation_deg", "step_translation_mm")


def make_options(base: RegistrationOptions | None = None, **values: Any) -> RegistrationOptions:
    """Registration options from user settings, converted and checked: the one place options are built.

    ``values`` are field names of `RegistrationOptions` (anything else is an
    InputError listing the valid names). ``levels`` may be a sequence of
    numbers or a string such as ``"8 4 2 1"``; whole numbers given as floats
    are accepted for the integer fields. The result is validated.
    """
    fields = {f.name for f in dataclasses.fields(RegistrationOptions)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise InputError(f"unknown registration option(s) {unknown}; valid options: {', '.join(sorted(fields))}")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if name == "levels":
            clean[name] = _levels(value)
        elif name in _INTEGERS:
            clean[name] = _integer(name, value)
        elif name in _FLOATS or (name in _OPTIONAL_FLOATS and value is not None):
            clean[name] = _number(name, value)
        else:
            clean[name] = value
    options = dataclasses.replace(base, **clean) if base is not None else RegistrationOptions(**clean)
    options.validate()
    return options


def _levels(value) -> tuple[float, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        factors = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        factors = ()
    if not factors or any(not (math.isfinite(f) and f >= 1) for f in factors):
        raise InputError(
            f"levels {value!r}: give downsampling factors >= 1, coarse to fine (e.g. 8 4 2 1)"
        )
    return factors


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value != int(value):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)
