"""Image filters shared by the engine: the one Gaussian blur (`gaussian_blur`) and its building blocks.

Every Gaussian blur in DiffReg (similarity measures, scatter and detector
blur in `physics.realism`, the edge finder of `figures.composites`) is
`gaussian_blur`: the Gaussian sampled at integer offsets, truncated at
`TRUNCATE` = 4 sigma, normalised to sum 1, with replicated borders, the rule
of ``scipy.ndimage.gaussian_filter(mode="nearest", truncate=4.0)``.

Small kernels are applied as sums of shifted slices (elementwise work, fast
on a busy CPU for the small images of registration, unlike conv2d's threaded
im2col); kernels wider than `FFT_RADIUS` pixels each side by FFT of the same
sampled kernel (a zero-padded linear convolution, no wrap-around), so both
paths give the same numbers to rounding. Both are differentiable by autograd.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .limits import MAX_BLUR_PX

TRUNCATE = 4.0
"""The kernel is cut at ``int(TRUNCATE * sigma + 0.5)`` pixels each side (scipy's rule)."""

FFT_RADIUS = 8
"""Kernels with a radius above this many pixels are applied by FFT, smaller ones by shifted sums."""


def check_sigma(sigma, name: str = "sigma", allow_zero: bool = True, high: float | None = MAX_BLUR_PX) -> float:
    """``sigma`` as a finite float >= 0 (> 0 unless ``allow_zero``) and <= ``high``, else InputError.

    Units are the caller's (pixels for `gaussian_blur`, whose kernels are
    limited to `MAX_BLUR_PX` pixels so that one never needs more memory
    than the image many times over); ``high=None`` lifts the upper bound.
    """
    if isinstance(sigma, (bool, str, bytes)):
        raise InputError(f"{name} must be a number of pixels, got {sigma!r:.60}")
    try:
        value = float(sigma)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise InputError(f"{name} must be a finite number of pixels, got {type(sigma).__name__} "
                         f"{_shown(sigma)}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {bound} (pixels), got {_shown(sigma)}")
    if high is not None and value > high:
        raise InputError(f"{name} must be at most {high:g} pixels, got {value:g}; a Gaussian that wide averages "
                         "the whole image (downsample the image first for such a blur)")
    return value


def _shown(value) -> str:
    """A short repr (integers of more than 4300 digits have none)."""
    try:
        text = repr(value)
    except ValueError:
        return "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def blur_radius(sigma: float) -> int:
    """Half-width in pixels of the sampled Gaussian of std ``sigma`` pixels: ``int(4 sigma + 0.5)``."""
    return int(TRUNCATE * float(sigma) + 0.5)


def gaussian_taps(sigma: float, radius: int) -> list[float]:
    """The Gaussian of std ``sigma`` (pixels) sampled at -radius..radius, normalised to sum 1 (2 radius + 1 taps)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).tolist()


def replicate(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad ``x`` by ``radius`` along ``dim`` on both sides, repeating the edge values (any radius)."""
    n = x.shape[dim]
    index = torch.arange(-radius, n + radius, device=x.device).clamp_(0, n - 1)
    return x.index_select(dim, index)


def correlate(x: torch.Tensor, taps: Sequence[float], dim: int) -> torch.Tensor:
    """'Valid' 1D correlation along ``dim``: out[i] = sum_k taps[k] x[i + k] (length n - len(taps) + 1).

    A sum of shifted slices: elementwise work only, which stays fast on a busy
    CPU for the small images of registration (unlike conv2d's threaded im2col).
    """
    n = x.shape[dim] - len(taps) + 1
    out = None
    for k, tap in enumerate(taps):
        if tap != 0:
            term = x.narrow(dim, k, n) * tap
            out = term if out is None else out + term
    return out


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (an FFT length pocketfft and cuFFT handle fast)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def correlate_fft(x: torch.Tensor, taps: Sequence[float], dim: int) -> torch.Tensor:
    """`correlate` of ``x`` with symmetric ``taps`` along ``dim``, by FFT (same numbers to rounding).

    Linear convolution: both are zero-padded to a length of at least
    n + len(taps) - 1 before the transform, so nothing wraps around.
    """
    k = len(taps)
    n = x.shape[dim] - k + 1
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    length = _fast_length(x.shape[dim] + k - 1)
    kernel = torch.tensor(taps, dtype=work.dtype, device=x.device)
    shape = [1] * x.dim()
    shape[dim] = -1
    spectrum = torch.fft.rfft(work, n=length, dim=dim) * torch.fft.rfft(kernel, n=length).reshape(shape)
    # full convolution[j] = sum_m taps[m] x[j - m]; with symmetric taps, j = i + k - 1 is the valid correlation
    return torch.fft.irfft(spectrum, n=length, dim=dim).narrow(dim, k - 1, n).to(x.dtype)


def _sigmas(sigma) -> tuple[float, float]:
    if isinstance(sigma, (tuple, list)) or (isinstance(sigma, (np.ndarray, torch.Tensor)) and sigma.ndim == 1):
        if len(sigma) != 2:
            raise InputError(f"sigma must be one number or (sigma_rows, sigma_cols) in pixels, got {sigma!r}")
        return check_sigma(sigma[0], "sigma_rows"), check_sigma(sigma[1], "sigma_cols")
    value = check_sigma(sigma)
    return value, value


def gaussian_blur(image: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) images; same shape and dtype out, differentiable.

    ``sigma`` in pixels: one number, or ``(sigma_rows, sigma_cols)`` for
    an anisotropic blur; 0 leaves that axis alone. Along each axis the
    kernel is the Gaussian sampled at integer offsets -r..r with
    ``r = int(4 sigma + 0.5)`` (`blur_radius`), normalised to sum 1, so a
    blurred constant is the same constant; borders are replicated (the pixel
    beyond the edge repeats the edge pixel, also for r larger than the
    image). This equals ``scipy.ndimage.gaussian_filter(image, sigma,
    mode="nearest", truncate=4.0)`` on the last two axes. Radii up to
    `FFT_RADIUS` use shifted sums, larger ones an FFT of the same kernel.
    """
    sigmas = _sigmas(sigma)
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() < 2:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"gaussian_blur needs a floating-point tensor of shape (..., H, W), got {got}; "
                         "convert with torch.as_tensor(image, dtype=torch.float64)")
    out = image
    for dim, s in zip((-2, -1), sigmas):
        radius = blur_radius(s)
        if s == 0 or radius == 0:
            continue
        taps = gaussian_taps(s, radius)
        padded = replicate(out, radius, dim)
        out = correlate(padded, taps, dim) if radius <= FFT_RADIUS else correlate_fft(padded, taps, dim)
    return out
