"""Image agreement for reports: NCC, SSIM and CSS of one DRR/X-ray pair (the poster's table)."""

from __future__ import annotations

import torch

from ..errors import InputError
from .inputs import _prepare
from .ncc import zncc
from .structural import css, ssim


def image_metrics(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """{"ncc": zncc, "ssim": ssim, "css": css} of ONE image pair, as Python floats, for reports."""
    a, b, w, _, _ = _prepare(drr, xray, mask)
    if a.shape[0] != 1:
        raise InputError(f"image_metrics compares one image pair, got a batch of {a.shape[0]}; call it per pair")
    with torch.no_grad():
        a, b, w = a.detach(), b.detach(), w.detach()
        return {"ncc": float(zncc(a, b, w)), "ssim": float(ssim(a, b, w)), "css": float(css(a, b, w))}
