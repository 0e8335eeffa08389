"""Structural similarity of z-scored images (`ssim`) and its contrast-structure part (`css`)."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..filters import correlate as _correlate
from ..filters import gaussian_taps as _gaussian_taps
from .inputs import _check_int, _check_sigma, _prepare, _regularised

SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_C1 = SSIM_K1 ** 2
"""SSIM luminance constant (K1 L)**2 with L = 1 global standard deviation of the z-scored images."""
SSIM_C2 = SSIM_K2 ** 2
"""SSIM contrast/structure constant (K2 L)**2 with L = 1 global standard deviation."""


def _zscore(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    mean = (p * x).sum((1, 2), keepdim=True)
    dev = x - mean
    var, _ = _regularised((p * dev ** 2).sum((1, 2), keepdim=True), mean)
    return dev * torch.rsqrt(var)


def _ssim_terms(a, b, w, window, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(luminance map, contrast-structure map, centre weights), each (B, H-2r, W-2r), r = window // 2."""
    window = _check_int(window, "window", 1)
    if window % 2 == 0:
        raise InputError(f"window must be an odd number of pixels (the window has a centre pixel), got {window}")
    sigma = _check_sigma(sigma, allow_zero=False)
    height, width = a.shape[-2:]
    if window > min(height, width):
        raise InputError(
            f"the {height}x{width} image is smaller than the {window}x{window} SSIM window; "
            "use a smaller window or a larger image"
        )
    p = w / w.sum((1, 2), keepdim=True)
    x, y = _zscore(a, p), _zscore(b, p)
    channels = torch.stack([w, w * x, w * y, w * x * x, w * y * y, w * x * y], 1)
    taps = _gaussian_taps(sigma, window // 2)
    local = _correlate(_correlate(channels, taps, -2), taps, -1)  # (B, 6, H - 2r, W - 2r)
    den = local[:, 0]
    den = torch.where(den > 0, den, torch.ones_like(den))
    mean_x, mean_y, exx, eyy, exy = (local[:, k] / den for k in range(1, 6))
    var_x, var_y = exx - mean_x ** 2, eyy - mean_y ** 2
    cov = exy - mean_x * mean_y
    luminance = (2 * mean_x * mean_y + SSIM_C1) / (mean_x ** 2 + mean_y ** 2 + SSIM_C1)
    contrast_structure = (2 * cov + SSIM_C2) / (var_x + var_y + SSIM_C2)
    r = window // 2
    centre = w[:, r:height - r, r:width - r]
    total = centre.flatten(1).sum(1)
    if (total <= 0).any():
        raise InputError(
            f"the mask has no pixel at least {r} px inside the image border, where a whole {window}x{window} "
            f"SSIM window fits (batch element(s) {torch.nonzero(total <= 0).flatten().tolist()}); "
            "use a smaller window or a mask that reaches into the image"
        )
    return luminance, contrast_structure, centre / total[:, None, None]


def ssim(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
         window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of z-scored images, (B,) in [-1, 1].

    DRR and X-ray have unrelated intensity scales, so each image is first
    z-scored over the mask: ``x -> (x - mean) / sqrt(var + eps)``. Local
    statistics use a ``window`` x ``window`` Gaussian window of std ``sigma``
    px, normalised to sum 1 (Wang's 11 / 1.5 by default); with a mask the
    window is additionally weighted by the mask (normalised convolution).
    SSIM map per window centre:

        ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x**2 + mu_y**2 + C1)(s_x**2 + s_y**2 + C2))

    with C1 = (0.01 L)**2 = 1e-4 and C2 = (0.03 L)**2 = 9e-4 for a dynamic
    range L = 1, one global standard deviation of the z-scored images
    (``SSIM_C1``, ``SSIM_C2``). The result is the mean of the map over the
    windows that fit inside the image ("valid"), weighted by the mask at the
    window centre when masked.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    luminance, contrast_structure, weight = _ssim_terms(a, b, w, window, sigma)
    return (weight * luminance * contrast_structure).flatten(1).sum(1).to(dtype)


def css(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
        window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Contrast-structure similarity "CSS": SSIM without its luminance term, (B,) in [-1, 1].

    Map ``(2 s_xy + C2) / (s_x**2 + s_y**2 + C2)`` (= contrast x structure of
    Wang et al. with C3 = C2/2), with the same z-scoring, window, constants
    and masked mean as ``ssim``. The luminance term l lies in [-1, 1], so the
    SSIM map l x cs is <= this map wherever it is >= 0 (and >= it wherever it
    is <= 0); hence SSIM <= CSS when no window has cs < 0.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    _, contrast_structure, weight = _ssim_terms(a, b, w, window, sigma)
    return (weight * contrast_structure).flatten(1).sum(1).to(dtype)
