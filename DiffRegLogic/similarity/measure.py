"""The similarity plug point of registration: a `Measure` is a callable plus what the optimisers need to know.

Registration accepts a similarity as a name (``"zncc"``), a `Measure`, or any
callable ``(drr, xray, mask) -> (B,)`` (a ``torch.nn.Module`` fits):

* ``function``: higher = more similar, differentiable w.r.t. ``drr``;
* ``residual`` (optional): ``r(drr, xray, mask) -> (B, M)`` with
  ``||r||**2 = 1 - similarity``, which Levenberg-Marquardt needs;
* ``dtype``: the dtype DRR and X-ray are compared in. The built-in measures
  use float64 (near the optimum 1 - ZNCC is ~1e-4, and float32 would leave
  the last improvements below its rounding); ``None`` compares in the DRR's
  own dtype, which is what a network wants.

A plain callable is wrapped with ``residual = callable.residual`` and
``dtype = callable.dtype`` when it has such attributes, else no residual and
the DRR's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .registry import RESIDUALS, SIMILARITIES, get_similarity

BUILTIN_DTYPE = torch.float64
"""The dtype the built-in measures compare in (see the module docstring)."""


@dataclass(frozen=True)
class Measure:
    """A similarity for registration (see the module docstring)."""

    function: Callable[..., torch.Tensor]
    residual: Callable[..., torch.Tensor] | None = None
    dtype: torch.dtype | None = BUILTIN_DTYPE
    name: str = "custom"

    def __call__(self, drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.function(drr, xray, mask)

    def require_residual(self) -> Callable[..., torch.Tensor]:
        """The residual, or InputError saying that Levenberg-Marquardt cannot use this measure."""
        if self.residual is None:
            builtin = self.name in SIMILARITIES
            kind = "has no least-squares residual" if builtin else "gives no residual (no .residual attribute)"
            raise InputError(
                f"similarity {self.name!r} {kind}; residuals exist for: {', '.join(sorted(RESIDUALS))} "
                "(use a gradient-based optimiser for the others, or give the measure a residual)"
            )
        return self.residual


def as_measure(similarity) -> Measure:
    """A `Measure` from a registry name, a `Measure`, or a callable ``(drr, xray, mask) -> (B,)``."""
    if isinstance(similarity, Measure):
        return similarity
    if isinstance(similarity, str):
        function = get_similarity(similarity)
        residual = RESIDUALS[similarity] if similarity in RESIDUALS else None
        return Measure(function, residual, BUILTIN_DTYPE, similarity)
    if callable(similarity):
        dtype = getattr(similarity, "dtype", None)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise InputError(f"a similarity's dtype attribute must be a torch.dtype or None, got {dtype!r}")
        name = getattr(similarity, "name", None) or getattr(similarity, "__name__", None) or type(similarity).__name__
        return Measure(similarity, getattr(similarity, "residual", None), dtype, str(name))
    raise InputError(
        f"similarity must be a name ({', '.join(sorted(SIMILARITIES))}), a Measure or a callable "
        f"(drr, xray, mask) -> (B,), got {type(similarity).__name__}"
    )
