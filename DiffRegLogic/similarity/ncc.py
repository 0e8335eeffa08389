"""Zero-normalised cross-correlation: global (`zncc`), per patch (`patch_zncc`), over scales (`multiscale_zncc`), and their least-squares residuals.

All are weighted moments over groups of pixels (the whole image, or a
partition into rectangles), computed by `_GroupStats`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .inputs import _check_int, _prepare, _regularised


def _bands(n: int, size: int, device) -> tuple[torch.Tensor, int]:
    """Band index (n,) of each row (or column), min(i // size, k - 1), and the band count k = n // size.

    The n % size leftover indices join the last band, so no band is narrower than ``size``.
    """
    count = n // size
    return torch.clamp(torch.arange(n, device=device) // size, max=count - 1), count


class _GroupStats:
    """Weighted first and second moments of two (B, H, W) images over a partition into rectangles.

    ``bands`` is None (one group: the whole image) or ``((row_band, nr),
    (col_band, nc))`` from ``_bands``; group sums are (B, nr, nc). Sums use
    ``index_add`` and expansion ``index_select`` (no BLAS calls, which are
    slow for tiny matrices on a busy CPU).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bands=None):
        self.bands = bands
        wsum = self.sum(w)
        self.valid = wsum > 0
        self.p = w / self.expand(torch.where(self.valid, wsum, torch.ones_like(wsum)))
        mean_a, mean_b = self.sum(self.p * a), self.sum(self.p * b)
        self.da, self.db = a - self.expand(mean_a), b - self.expand(mean_b)
        var_a, var_b = self.sum(self.p * self.da ** 2), self.sum(self.p * self.db ** 2)
        self.cov = self.sum(self.p * self.da * self.db)
        self.va, self.eps_a = _regularised(var_a, mean_a)
        self.vb, self.eps_b = _regularised(var_b, mean_b)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.bands is None:
            return x.sum((1, 2), keepdim=True)
        (rows, n_rows), (cols, n_cols) = self.bands
        per_row_band = x.new_zeros(x.shape[0], n_rows, x.shape[2]).index_add(1, rows, x)
        return x.new_zeros(x.shape[0], n_rows, n_cols).index_add(2, cols, per_row_band)

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """Group values (B, nr, nc) -> per pixel (B, H, W) (broadcastable (B, 1, 1) for one group)."""
        if self.bands is None:
            return s
        (rows, _), (cols, _) = self.bands
        return s.index_select(1, rows).index_select(2, cols)

    def zncc(self) -> torch.Tensor:
        """(B, nr, nc) ZNCC of each group (0 for groups without weight)."""
        return self.cov / torch.sqrt(self.va * self.vb)

    def count(self) -> torch.Tensor:
        return self.valid.flatten(1).sum(1).to(self.cov.dtype)

    def mean_zncc(self) -> torch.Tensor:
        """(B,) mean ZNCC over the groups that have weight."""
        values = torch.where(self.valid, self.zncc(), torch.zeros_like(self.cov))
        return values.flatten(1).sum(1) / self.count()

    def residual(self) -> torch.Tensor:
        """(B, H*W + nr*nc) residual with squared norm 1 - mean_zncc().

        Per pixel sqrt(p/2) (a_hat - b_hat) / sqrt(K), a_hat = (a - mean) / sqrt(var + eps);
        one extra entry per group, sqrt((eps_a/va + eps_b/vb)/2) / sqrt(K), restores
        what the regularisation takes from the two unit variances, so that the
        sum of squares is (1/K) sum_k (1 - zncc_k) exactly.
        """
        scale = torch.rsqrt(self.count())
        pixel = torch.sqrt(self.p / 2) * (self.da * self.expand(torch.rsqrt(self.va))
                                           - self.db * self.expand(torch.rsqrt(self.vb)))
        extra = torch.sqrt((self.eps_a / self.va + self.eps_b / self.vb) / 2)
        extra = torch.where(self.valid, extra, torch.zeros_like(extra))
        return torch.cat([pixel.flatten(1), extra.flatten(1)], 1) * scale[:, None]


def _global_stats(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> _GroupStats:
    return _GroupStats(a, b, w)


def default_patch_size(height: int, width: int) -> int:
    """Default patch side for ``patch_zncc``: 1/8 of the shorter image side, at least 4 px (and at most that side)."""
    return min(max(4, min(height, width) // 8), min(height, width))


def _patch_stats(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, patch_size) -> _GroupStats:
    height, width = a.shape[-2:]
    if patch_size is None:
        patch_size = default_patch_size(height, width)
    patch_size = _check_int(patch_size, "patch_size", 2)
    if patch_size > min(height, width):
        raise InputError(
            f"patch_size {patch_size} px is larger than the {height}x{width} image (patches must fit inside it); "
            "use a patch_size of at most the shorter image side, or zncc for one global patch"
        )
    return _GroupStats(a, b, w, (_bands(height, patch_size, a.device), _bands(width, patch_size, a.device)))


def zncc(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-normalised cross-correlation, (B,) in [-1, 1].

    ``ZNCC = sum_i p_i (a_i - mean_a)(b_i - mean_b) / sqrt((var_a + eps_a)(var_b + eps_b))``
    with pixel weights ``p_i = w_i / sum(w)`` (w = mask, 1 without one),
    weighted means ``mean = sum_i p_i x_i`` and population variances
    ``var = sum_i p_i (x_i - mean)**2``; eps as in the module docstring
    (a constant image gives ~0).

    Shapes: drr (B, H, W) or (H, W); xray and mask (H, W) or (B, H, W).
    Dimensionless; invariant to ``x -> s x + t`` with s > 0 (s < 0 flips the sign).
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    return _global_stats(a, b, w).mean_zncc().to(dtype)


def patch_zncc(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
               patch_size: int | None = None) -> torch.Tensor:
    """Mean ZNCC over non-overlapping square patches, (B,) in [-1, 1].

    The image is tiled from the top-left corner with ``patch_size`` x
    ``patch_size`` patches; the rows and columns left over when H or W is not a
    multiple of ``patch_size`` join the last row / column of patches (so edge
    patches are up to 2 * patch_size - 1 wide, never a thin sliver). Each patch
    gets the (masked, weighted) ZNCC of ``zncc``; the result is the plain mean
    over the patches whose mask weight is nonzero (others are left out).

    ``patch_size=None`` uses ``default_patch_size(H, W)`` = 1/8 of the shorter
    side, at least 4 px: 6 px on 50x50, 25 px on 200x200 images, i.e. 64
    patches, each still large enough for a stable correlation.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    return _patch_stats(a, b, w, patch_size).mean_zncc().to(dtype)


def _scales(patch_sizes, height: int, width: int) -> list[int | None]:
    if patch_sizes is None:
        short = min(height, width)
        patch_sizes = (None, max(4, short // 4), max(4, short // 8))
        patch_sizes = [s if s is None or s <= short else short for s in patch_sizes]
        patch_sizes = list(dict.fromkeys(patch_sizes))
    elif isinstance(patch_sizes, (str, bytes)) or not isinstance(patch_sizes, Sequence) or len(patch_sizes) == 0:
        raise InputError(
            f"patch_sizes must be a non-empty sequence of patch sizes in px (None = global ZNCC), got {patch_sizes!r}"
        )
    return list(patch_sizes)


def _multiscale_stats(a, b, w, patch_sizes) -> list[_GroupStats]:
    height, width = a.shape[-2:]
    return [_global_stats(a, b, w) if size is None else _patch_stats(a, b, w, size)
            for size in _scales(patch_sizes, height, width)]


def multiscale_zncc(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                    patch_sizes: Sequence[int | None] | None = None) -> torch.Tensor:
    """Mean over scales of ZNCC: ``None`` = global ``zncc``, an int = ``patch_zncc`` at that patch size.

    (B,) in [-1, 1]. ``patch_sizes=None`` uses (None, short // 4, short // 8)
    with short the shorter image side (each at least 4 px, duplicates
    dropped): global shape, then coarse and fine local structure.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    values = [stats.mean_zncc() for stats in _multiscale_stats(a, b, w, patch_sizes)]
    return torch.stack(values, 0).mean(0).to(dtype)


def zncc_residual(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Residual r (B, H*W + 1) with ``(r**2).sum(-1) == 1 - zncc``.

    ``r_i = sqrt(p_i / 2) (a_hat_i - b_hat_i)`` with z-scores
    ``x_hat = (x - mean) / sqrt(var + eps)`` (population variance, weights
    p = w / sum(w); unmasked p = 1/N, i.e. (a_hat - b_hat) / sqrt(2N)), since
    ``sum p (a_hat - b_hat)**2 = 2 - 2 ZNCC`` for unit variances. The last
    entry, ``sqrt((eps_a/(var_a+eps_a) + eps_b/(var_b+eps_b)) / 2)``, gives
    back what eps takes from the unit variances, so the identity is exact.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    return _global_stats(a, b, w).residual().to(dtype)


def patch_zncc_residual(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                        patch_size: int | None = None) -> torch.Tensor:
    """Residual r (B, H*W + n_patches) with ``(r**2).sum(-1) == 1 - patch_zncc``.

    Each patch's ZNCC residual (as ``zncc_residual``, over the patch) divided by
    sqrt(K), K = number of patches with mask weight; patches without weight
    contribute zeros.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    return _patch_stats(a, b, w, patch_size).residual().to(dtype)


def multiscale_zncc_residual(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                             patch_sizes: Sequence[int | None] | None = None) -> torch.Tensor:
    """Residual (B, M) with ``(r**2).sum(-1) == 1 - multiscale_zncc``: per-scale residuals / sqrt(n_scales), concatenated."""
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    parts = _multiscale_stats(a, b, w, patch_sizes)
    scale = 1.0 / math.sqrt(len(parts))
    return (torch.cat([stats.residual() for stats in parts], 1) * scale).to(dtype)
