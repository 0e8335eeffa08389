"""Mean squared error: the residual for Levenberg-Marquardt and the similarity ``1 - MSE``.

Unlike the normalised measures MSE is NOT invariant to the intensity scale
or offset of either image: use it only when the DRR and the X-ray have been
brought to the same intensity scale (e.g. a DRR target, or a fitted
intensity model).
"""

from __future__ import annotations

import torch

from .inputs import _prepare


def mse_residual(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Residual (B, H*W) ``r_i = sqrt(p_i) (drr_i - xray_i)``, p = w / sum(w) (unmasked: (drr - xray) / sqrt(N)).

    ``(r**2).sum(-1)`` is the (weighted) mean squared error in intensity units
    squared. Unlike the other measures MSE is NOT invariant to the intensity
    scale or offset of either image: use it only when the DRR and the X-ray
    have been brought to the same intensity scale.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    p = w / w.sum((1, 2), keepdim=True)
    return (torch.sqrt(p) * (a - b)).flatten(1).to(dtype)


def mse(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - `` the (weighted) mean squared error, (B,): higher = more similar, 1 for identical images.

    Defined so that ``(mse_residual(...)**2).sum(-1) == 1 - mse(...)``, the
    identity every residual in `DiffRegLogic.similarity` keeps, so gradient
    methods and Levenberg-Marquardt optimise the same cost. Intensity units
    squared; not invariant to scale or offset.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    p = w / w.sum((1, 2), keepdim=True)
    return (1.0 - (p * (a - b) ** 2).flatten(1).sum(1)).to(dtype)
