"""`RegistrationOptions`: every setting of one registration, and `make_options`, the one place they are built.

The command line tool, the Slicer bridge and the experiments all call
`make_options` with the user's settings, so the names, conversions and
checks are the same everywhere; the renders that report a result (NCC/SSIM,
the ``--drr`` file, the panel's DRR) take `RegistrationOptions.render_options`
so they use the renderer settings the registration used. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..limits import (MAX_ITERATIONS, MAX_STARTS, MAX_TRANSLATION_MM, MEMORY_MB_RANGE, SEED_RANGE,
                      STEP_VOXELS_RANGE, check_number)

PARAMETERIZATIONS = ("se3", "spherical")
"""Pose parameters: se3 (motion of the CT about its centre) or spherical (the seed paper's C-arm model)."""
SEARCHES = ("local", "wide")
"""Global search before the local optimiser: none (local) or a batched search over a wide range (wide)."""
ROBUST_WEIGHTS = ("none", "tukey")
"""Robust pixel weighting of the similarity: none, or Tukey's biweight on the normalised residual."""
NUISANCES = ("none", "scatter")
"""Low-frequency intensity terms fitted jointly with the pose: none, or an additive scatter field."""
MAX_SEARCH_CANDIDATES = 100_000
"""Candidate poses of one global search (each is one coarse DRR)."""

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
    # global search before the local optimiser (`search`): "local" = none; "wide" = many candidate poses within
    # +-search_rotation_deg / +-search_translation_mm of the start scored on the coarsest level, the best
    # search_keep of them refined
    search: str = "local"
    search_rotation_deg: float = 45.0
    search_translation_mm: float = 60.0
    search_candidates: int = 1024
    search_keep: int = 8
    # robustness to what the CT cannot explain (`DiffRegLogic.similarity.robust`, `DiffRegLogic.drr.footprint`):
    # robust = residual weighting of the pixels ("none" | "tukey"), set once per pyramid level at the pose the
    # level starts from, from the second level on (`registration.engine.reweighted_level`);
    # footprint_mask = compare only pixels whose rays cross the CT's box at the current pose;
    # nuisance = low-frequency intensity terms fitted with the pose ("none" | "scatter")
    robust: str = "none"
    footprint_mask: bool = False
    nuisance: str = "none"

    def validate(self) -> None:
        """Raise InputError for any setting that cannot work (types, names, ranges, LM without a residual).

        Leaves the options as they are; `checked` returns the normalised copy a registration runs with.
        """
        self.checked()

    def checked(self) -> "RegistrationOptions":
        """A copy with every setting checked and normalised (ints, floats, ``levels`` a tuple of floats).

        Raises `InputError` naming the setting, its range and the value for
        anything that cannot work (ranges: `DiffRegLogic.limits` and the
        constants of this module). The options themselves are not changed.
        """
        from ..drr.backends import BACKENDS, RENDERERS
        from .optimizers import OPTIMIZERS

        for name, table, label in (("backend", BACKENDS, "backend"), ("optimizer", OPTIMIZERS, "optimiser"),
                                   ("renderer", RENDERERS, "renderer"),
                                   ("parameterization", PARAMETERIZATIONS, "parameterization"),
                                   ("search", SEARCHES, "search"), ("robust", ROBUST_WEIGHTS, "robust weighting"),
                                   ("nuisance", NUISANCES, "nuisance model")):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in table:
                raise InputError(f"unknown {label} {value!r} ({name}); choose one of {', '.join(sorted(table))}")
        self._validate_similarity()
        values = {"levels": _level_factors(self.levels)}
        for name, (low, high) in _INTEGER_RANGES.items():
            values[name] = check_number(name, getattr(self, name), low, high, integer=True)
        for name, (low, high, unit) in _FLOAT_RANGES.items():
            values[name] = check_number(name, getattr(self, name), low, high, unit=unit)
        if values["momentum"] >= 1.0:
            raise InputError(f"momentum must be in [0, 1) (1 would never forget a gradient), got {self.momentum}")
        for name, (high, unit) in _STEP_RANGES.items():
            value = getattr(self, name)
            values[name] = None if value is None else check_number(name, value, 0.0, high, low_open=True, unit=unit)
        values["step_voxels"] = check_number("step_voxels", self.step_voxels, *STEP_VOXELS_RANGE, unit="voxels")
        values["max_memory_mb"] = check_number("max_memory_mb", self.max_memory_mb, *MEMORY_MB_RANGE, unit="MB")
        if not isinstance(self.footprint_mask, bool):
            raise InputError(f"footprint_mask must be True or False, got {self.footprint_mask!r}")
        if values["search_keep"] > values["search_candidates"]:
            raise InputError(f"search_keep ({values['search_keep']}) must not exceed search_candidates "
                             f"({values['search_candidates']}): the search keeps the best of its candidates")
        return dataclasses.replace(self, **values)

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


MAX_LEVELS = 32
"""Pyramid levels of one registration (each level halving the detector, 32 covers any detector)."""
MAX_STEP_ROTATION_DEG = 3600.0
"""Largest initial rotation step (Adam: deg per step; gd family: deg^2 per unit of similarity)."""
MAX_EVALUATIONS = 10_000_000
"""Renders per start and level of the gradient-free baselines."""

_INTEGER_RANGES = {
    "max_iterations": (1, MAX_ITERATIONS),
    "patience": (1, MAX_ITERATIONS),
    "max_step_reductions": (0, MAX_ITERATIONS),
    "max_evaluations": (1, MAX_EVALUATIONS),
    "n_starts": (1, MAX_STARTS),
    "search_candidates": (1, MAX_SEARCH_CANDIDATES),
    "search_keep": (1, MAX_STARTS),
    "seed": SEED_RANGE,
}
_FLOAT_RANGES = {  # name: (low, high, unit)
    "momentum": (0.0, 1.0, ""),
    "tolerance": (0.0, None, ""),
    "min_step_deg": (0.0, 360.0, "deg"),
    "min_step_mm": (0.0, MAX_TRANSLATION_MM, "mm"),
    "start_rotation_deg": (0.0, 180.0, "deg"),
    "start_translation_mm": (0.0, MAX_TRANSLATION_MM, "mm"),
    "search_rotation_deg": (0.0, 180.0, "deg"),
    "search_translation_mm": (0.0, MAX_TRANSLATION_MM, "mm"),
}
_STEP_RANGES = {  # optional, > 0: name: (high, unit)
    "step_rotation_deg": (MAX_STEP_ROTATION_DEG, "deg"),
    "step_translation_mm": (MAX_TRANSLATION_MM, "mm"),
}


def make_options(base: RegistrationOptions | None = None, **values: Any) -> RegistrationOptions:
    """Registration options from user settings, converted and checked: the one place options are built.

    ``values`` are field names of `RegistrationOptions` (anything else is an
    InputError listing the valid names). ``levels`` may be a sequence of
    numbers or a string such as ``"8 4 2 1"``; whole numbers given as floats
    are accepted for the integer fields. The result is checked and
    normalised (`RegistrationOptions.checked`); ``base`` is not changed.
    """
    if base is not None and not isinstance(base, RegistrationOptions):
        raise InputError(f"base must be RegistrationOptions or None, got {type(base).__name__}")
    fields = {f.name for f in dataclasses.fields(RegistrationOptions)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise InputError(f"unknown registration option(s) {unknown}; valid options: {', '.join(sorted(fields))}")
    if isinstance(values.get("levels"), str):
        values["levels"] = _levels_from_text(values["levels"])
    options = dataclasses.replace(base, **values) if base is not None else RegistrationOptions(**values)
    return options.checked()


def as_options(options: Any) -> RegistrationOptions:
    """``options`` (None = the defaults) checked and normalised, or InputError if it is not `RegistrationOptions`."""
    if options is None:
        return RegistrationOptions()
    if not isinstance(options, RegistrationOptions):
        hint = "make_options(**settings)" if isinstance(options, dict) else "make_options(...)"
        raise InputError(f"options must be RegistrationOptions, got {type(options).__name__}; build them with {hint}")
    return options.checked()


def _levels_from_text(text: str) -> tuple[float, ...]:
    """Factors from text such as ``"8 4 2 1"`` or ``"8,4,2,1"``."""
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise InputError(f"levels {text!r}: give downsampling factors >= 1, coarse to fine (e.g. 8 4 2 1)") from None


def _level_factors(levels: Any) -> tuple[float, ...]:
    """``levels`` as a tuple of finite factors >= 1, or InputError."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (tuple, list)) and not hasattr(levels, "__len__"):
        raise InputError(
            f"levels must be a sequence of downsampling factors >= 1, coarse to fine (e.g. (8, 4, 2, 1)), got "
            f"{levels!r}" + ("; make_options reads text such as '8 4 2 1'" if isinstance(levels, str) else "")
        )
    try:
        items = [levels[i] for i in range(len(levels))]
    except Exception:  # noqa: BLE001 - anything that is not a plain sequence
        raise InputError(f"levels must be a sequence of downsampling factors >= 1, got {levels!r}") from None
    if not 1 <= len(items) <= MAX_LEVELS:
        raise InputError(f"levels must list 1 to {MAX_LEVELS} downsampling factors (coarse to fine), "
                         f"got {len(items)}")
    return tuple(check_number(f"levels[{i}]", f.item() if _is_scalar_array(f) else f, 1.0)
                 for i, f in enumerate(items))


def _is_scalar_array(value: Any) -> bool:
    """A 0-d numpy array or a one-element tensor (what iterating an array or tensor gives)."""
    return getattr(value, "ndim", None) == 0 and hasattr(value, "item")
