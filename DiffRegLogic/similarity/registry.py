"""The similarity and residual name tables (torch-free), and lookups that say what exists.

``SIMILARITIES[name]`` is ``f(drr, xray, mask=None) -> (B,)``, higher = more
similar; ``RESIDUALS[name]`` is ``r(drr, xray, mask=None) -> (B, M)`` with
``||r||**2 == 1 - similarity`` (Levenberg-Marquardt). The command line tool's
``--similarity`` choices, the Slicer panel's list and the registration's
validation all read these tables; a plug-in adds a measure with
``SIMILARITIES.register(name, function)`` (and ``RESIDUALS.register`` for a
residual), or passes any callable / `Measure` to registration directly.
"""

from __future__ import annotations

from typing import Callable

from ..registry import Registry

_HERE = "DiffRegLogic.similarity"

SIMILARITIES = Registry("similarity", {
    "zncc": f"{_HERE}.ncc:zncc",
    "patch_zncc": f"{_HERE}.ncc:patch_zncc",
    "multiscale_zncc": f"{_HERE}.ncc:multiscale_zncc",
    "gradient_ncc": f"{_HERE}.gradient:gradient_ncc",
    "ssim": f"{_HERE}.structural:ssim",
    "css": f"{_HERE}.structural:css",
    "mi": f"{_HERE}.information:mutual_information",
    "mse": f"{_HERE}.squared_error:mse",
}, {
    "zncc": "zero-normalised cross-correlation",
    "patch_zncc": "mean ZNCC over non-overlapping patches",
    "multiscale_zncc": "mean of global and patch ZNCC at two patch sizes",
    "gradient_ncc": "ZNCC of the Sobel derivatives (gradient correlation)",
    "ssim": "structural similarity of z-scored images",
    "css": "contrast-structure part of SSIM",
    "mi": "mutual information (Parzen histogram)",
    "mse": "1 - mean squared error (same intensity scale only)",
})
"""Similarity measures by name; each ``f(drr, xray, mask=None) -> (B,)``, higher = more similar."""

RESIDUALS = Registry("residual", {
    "zncc": f"{_HERE}.ncc:zncc_residual",
    "patch_zncc": f"{_HERE}.ncc:patch_zncc_residual",
    "multiscale_zncc": f"{_HERE}.ncc:multiscale_zncc_residual",
    "gradient_ncc": f"{_HERE}.gradient:gradient_ncc_residual",
    "mse": f"{_HERE}.squared_error:mse_residual",
})
"""Least-squares residuals by name; each ``r(drr, xray, mask=None) -> (B, M)`` with ||r||**2 = 1 - similarity."""


def get_similarity(name: str) -> Callable:
    """The similarity function called ``name`` (a key of ``SIMILARITIES``)."""
    return SIMILARITIES.lookup(name)


def get_residual(name: str) -> Callable:
    """The least-squares residual called ``name`` (a key of ``RESIDUALS``)."""
    from ..errors import InputError

    if name not in RESIDUALS:
        kind = "has no least-squares residual" if name in SIMILARITIES else "is not a known residual"
        raise InputError(
            f"similarity {name!r} {kind}; residuals exist for: {', '.join(sorted(RESIDUALS))} "
            "(use a gradient-based optimiser for the others)"
        )
    return RESIDUALS[name]
