"""Image similarity between a DRR and an X-ray: differentiable, batched, masked.

Every measure takes

* ``drr``: the rendered image, a floating tensor (B, H, W) or (H, W),
* ``xray``: the X-ray, (H, W) or (B, H, W), broadcast against ``drr``,
* ``mask``: ``None`` or (H, W) / (B, H, W) weights in [0, 1] (bool or float);
  pixels of weight 0 are ignored (collimator borders, labels, burnt-out
  areas). Their values never enter a result, so they may hold NaN/inf,

and returns a (B,) tensor (B = 1 for 2D inputs) in the dtype of ``drr``,
**higher = more similar**. Gradients flow to ``drr`` (and ``xray``) through
torch autograd. The work is done with whole-image tensor operations (filters
as sums of shifted slices, patch sums with ``index_add``), never with Python
loops over pixels.

Intensities have no unit here: a DRR is a line integral of attenuation, an
X-ray is detector counts or log-converted counts. The normalised measures
(ZNCC and its variants, gradient NCC, SSIM/CSS on z-scored images, MI on
min-max normalised images) are therefore invariant to a positive affine
change of either image's intensities; ``mse_residual`` is not.

Constant images. A DRR whose rays all miss the CT is constant; its standard
deviation is 0 and ZNCC would be 0/0. Every variance that divides is
regularised as ``var + eps`` with ``eps = u**2 * mean(x**2) + EPS_ABS``
(weighted moments, intensity units squared), u the machine epsilon of the
computation dtype (1.2e-7 for float32, 2.2e-16 for float64; half precision
is computed in float32) and ``EPS_ABS = 1e-20``. This changes a real image's
ZNCC by a relative u**2 * (1 + mean**2 / var): invisible, so identical images
give 1 to float precision. For a constant image the deviations from the mean
are one number (0 or a rounding error) at every pixel, so their covariance
with any image vanishes and ZNCC is ~0; eps only removes the 0/0 and keeps
``(var + eps)**-1.5`` in autograd finite even in float32. The gradient of a
normalised measure at a constant image is genuinely unbounded (any tiny
pattern added to it has correlation of order 1), so it is finite but may be
large. The range in ``mutual_information`` is regularised the same way
(``u * (|max| + |min|) + 1e-10``).

Residuals for least squares (Levenberg-Marquardt): ``RESIDUALS[name](drr,
xray, mask)`` returns r (B, M) with ``(r**2).sum(-1) == 1 - similarity``
exactly (for "mse": the weighted mean squared error).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = [
    "EPS_ABS", "SSIM_C1", "SSIM_C2",
    "zncc", "patch_zncc", "multiscale_zncc", "gradient_ncc", "ssim", "css", "mutual_information",
    "zncc_residual", "patch_zncc_residual", "multiscale_zncc_residual", "gradient_ncc_residual", "mse_residual",
    "gaussian_blur", "default_patch_size", "image_metrics",
    "SIMILARITIES", "RESIDUALS", "get_similarity", "get_residual",
]

EPS_ABS = 1e-20
"""Absolute floor added to every variance that divides (intensity units squared; module docstring)."""

SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_C1 = SSIM_K1 ** 2
"""SSIM luminance constant (K1 L)**2 with L = 1 global standard deviation of the z-scored images."""
SSIM_C2 = SSIM_K2 ** 2
"""SSIM contrast/structure constant (K2 L)**2 with L = 1 global standard deviation."""

Similarity = Callable[..., torch.Tensor]

# --------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise InputError(f"{name} must be a torch tensor or numpy array, got {type(value).__name__}")


def _prepare(drr, xray, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.dtype]:
    """Check and broadcast the inputs.

    Returns ``(a, b, w, masked, out_dtype)``: DRR, X-ray and weights as (B, H, W)
    tensors in a float dtype of at least single precision, on the DRR's device;
    pixels of weight 0 are set to 0 in ``a`` and ``b`` so their content
    (NaN included) cannot leak into a result.
    """
    drr = _as_tensor(drr, "drr")
    xray = _as_tensor(xray, "xray")
    for name, image in (("drr", drr), ("xray", xray)):
        if not image.is_floating_point():
            raise InputError(
                f"{name} has dtype {image.dtype}, not a floating-point type; similarity measures need "
                "float images: convert it with .float() or .double()"
            )
        if image.dim() not in (2, 3):
            raise InputError(f"{name} must have shape (H, W) or (B, H, W), got shape {tuple(image.shape)}")
        if image.shape[-1] == 0 or image.shape[-2] == 0 or image.shape[0] == 0:
            raise InputError(f"{name} is empty (shape {tuple(image.shape)}); pass an image with pixels")
    if drr.shape[-2:] != xray.shape[-2:]:
        raise InputError(
            f"drr has shape {tuple(drr.shape)} but xray has shape {tuple(xray.shape)}: the image sizes (H, W) "
            "must match; render the DRR on the X-ray's detector or resample one image to the other"
        )
    height, width = drr.shape[-2:]
    out_dtype = drr.dtype
    dtype = torch.promote_types(drr.dtype, torch.float32)
    a = drr.to(dtype).reshape(-1, height, width)
    b = xray.to(device=drr.device, dtype=dtype).reshape(-1, height, width)
    sizes = [("drr", tuple(drr.shape), a.shape[0]), ("xray", tuple(xray.shape), b.shape[0])]

    masked = mask is not None
    if masked:
        mask = _as_tensor(mask, "mask")
        if mask.dim() not in (2, 3) or mask.shape[-2:] != drr.shape[-2:]:
            raise InputError(
                f"mask has shape {tuple(mask.shape)} but the images are {tuple(drr.shape[-2:])} (H, W): "
                "pass an (H, W) or (B, H, W) mask of the images' size"
            )
        if mask.is_complex():
            raise InputError(f"mask has dtype {mask.dtype}; pass a bool mask or float weights in [0, 1]")
        w = mask.to(device=drr.device, dtype=dtype).reshape(-1, height, width)
        if not torch.isfinite(w).all() or (w < 0).any() or (w > 1).any():
            raise InputError("mask weights must be finite and lie in [0, 1] (0 = ignore the pixel, 1 = full weight)")
        sizes.append(("mask", tuple(mask.shape), w.shape[0]))
    else:
        w = torch.ones(1, height, width, dtype=dtype, device=drr.device)

    batch = max(size for _, _, size in sizes)
    for name, shape, size in sizes:
        if size not in (1, batch):
            described = ", ".join(f"{n} {s}" for n, s, _ in sizes)
            raise InputError(
                f"batch sizes do not match ({described}): {name} has {size} images where {batch} are expected; "
                "pass one image or as many as the others (leading dimension B)"
            )
    a, b, w = a.expand(batch, -1, -1), b.expand(batch, -1, -1), w.expand(batch, -1, -1)

    inside = w > 0
    empty = ~inside.flatten(1).any(1)
    if empty.any():
        which = torch.nonzero(empty).flatten().tolist()
        raise InputError(
            f"mask has no nonzero pixel (batch element(s) {which}): every pixel would be ignored; "
            "pass a mask that selects the region to compare, or mask=None"
        )
    bad = ~torch.isfinite(b) & inside
    if bad.any():
        raise InputError(
            f"xray has {int(bad.sum())} NaN/inf pixel(s) where the mask is nonzero; replace them "
            "(e.g. torch.nan_to_num) or give them weight 0 in the mask"
        )
    if masked:
        zero = torch.zeros((), dtype=dtype, device=drr.device)
        a = torch.where(inside, a, zero)
        b = torch.where(inside, b, zero)
    return a, b, w, masked, out_dtype


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_sigma(sigma, name: str = "sigma", allow_zero: bool = True) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number of pixels, got {sigma!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {bound} (pixels), got {sigma!r}")
    return value


def _regularised(var: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(var + eps, eps) with eps = u**2 * mean(x**2) + EPS_ABS, u = machine epsilon of the dtype."""
    u = torch.finfo(var.dtype).eps
    eps = (u * u) * (var + mean * mean) + EPS_ABS
    return var + eps, eps


# --------------------------------------------------------------------------
# Grouped (global / patch-wise) ZNCC
# --------------------------------------------------------------------------


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
    elif isinstance(patch_sizes, (int, np.integer)) or len(patch_sizes) == 0:
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


# --------------------------------------------------------------------------
# Gaussian blur and gradient NCC
# --------------------------------------------------------------------------


def _gaussian_taps(sigma: float, radius: int) -> list[float]:
    """The Gaussian of std ``sigma`` sampled at -radius..radius, normalised to sum 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).tolist()


def _replicate(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad ``x`` by ``radius`` along ``dim`` on both sides, repeating the edge values."""
    n = x.shape[dim]
    index = torch.arange(-radius, n + radius, device=x.device).clamp_(0, n - 1)
    return x.index_select(dim, index)


def _correlate(x: torch.Tensor, taps: Sequence[float], dim: int) -> torch.Tensor:
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


def gaussian_blur(image: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) images; sigma in pixels, 0 = no blur.

    The kernel is the Gaussian sampled at integer offsets -r..r with
    ``r = int(truncate * sigma + 0.5)``, normalised to sum 1, so a blurred
    constant is the same constant. Borders are replicated (the pixel beyond
    the edge repeats the edge pixel). Differentiable; same shape and dtype out.
    """
    sigma = _check_sigma(sigma)
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() < 2:
        raise InputError("gaussian_blur needs a floating-point tensor of shape (..., H, W)")
    radius = int(truncate * sigma + 0.5)
    if sigma == 0 or radius == 0:
        return image
    taps = _gaussian_taps(sigma, radius)
    x = _correlate(_replicate(image, radius, -2), taps, -2)
    return _correlate(_replicate(x, radius, -1), taps, -1)


_SMOOTH = (0.25, 0.5, 0.25)
_DIFF = (-0.5, 0.0, 0.5)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column derivatives (B, H, W) of (B, H, W) images: Sobel / 8 (replicated border).

    d/drow = central difference (x[r+1] - x[r-1]) / 2 along rows of the
    [1, 2, 1] / 4 column-smoothed image; d/dcol likewise, transposed.
    """
    padded = _replicate(_replicate(x, 1, -2), 1, -1)
    d_rows = _correlate(_correlate(padded, _DIFF, -2), _SMOOTH, -1)
    d_cols = _correlate(_correlate(padded, _SMOOTH, -2), _DIFF, -1)
    return d_rows, d_cols


def _erode(w: torch.Tensor) -> torch.Tensor:
    """Smallest weight in each pixel's 3x3 neighbourhood (the image border does not erode)."""
    padded = _replicate(_replicate(w, 1, -2), 1, -1)
    rows = torch.minimum(torch.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.minimum(torch.minimum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _gradient_stats(a, b, w, masked: bool, sigma) -> tuple[_GroupStats, _GroupStats]:
    sigma = _check_sigma(sigma)
    height, width = a.shape[-2:]
    if height < 3 or width < 3:
        raise InputError(f"gradient_ncc needs images of at least 3x3 pixels (Sobel window), got {height}x{width}")
    if masked:
        # normalised convolution: only pixels inside the mask enter the blur
        den = gaussian_blur(w, sigma)
        den = torch.where(den > 0, den, torch.ones_like(den))
        a = gaussian_blur(w * a, sigma) / den
        b = gaussian_blur(w * b, sigma) / den
        # keep the gradients whose 3x3 Sobel window lies inside the mask
        w = _erode(w)
        empty = ~(w > 0).flatten(1).any(1)
        if empty.any():
            raise InputError(
                "gradient_ncc: the mask has no pixel whose 3x3 neighbourhood lies inside it (batch element(s) "
                f"{torch.nonzero(empty).flatten().tolist()}); use a larger mask region"
            )
    else:
        a, b = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
    a_rows, a_cols = _sobel(a)
    b_rows, b_cols = _sobel(b)
    return _global_stats(a_rows, b_rows, w), _global_stats(a_cols, b_cols, w)


def gradient_ncc(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                 sigma: float = 1.0) -> torch.Tensor:
    """Gradient correlation, (B,) in [-1, 1].

    Both images are blurred with ``gaussian_blur(sigma)`` (sigma in pixels,
    0 = no blur), differentiated with the Sobel operator along rows (d/dv) and
    columns (d/du), and the result is ``(ZNCC(da/dv, db/dv) + ZNCC(da/du, db/du)) / 2``.
    With a mask the blur is a normalised convolution ``blur(w x) / blur(w)``
    (ignored pixels do not leak in) and a gradient counts with the smallest
    weight of its 3x3 Sobel window. The default sigma = 1 px suppresses pixel
    noise without washing out edges on 50..200 px images.
    Invariant to adding a constant to either image and to positive scaling.
    """
    a, b, w, masked, dtype = _prepare(drr, xray, mask)
    rows, cols = _gradient_stats(a, b, w, masked, sigma)
    return ((rows.mean_zncc() + cols.mean_zncc()) / 2).to(dtype)


# --------------------------------------------------------------------------
# SSIM and CSS
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Mutual information
# --------------------------------------------------------------------------


def _minmax(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (H, W) image over its masked pixels to [0, 1]; 0 outside the mask."""
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    low = torch.where(inside, x, inf).amin((1, 2), keepdim=True)
    high = torch.where(inside, x, -inf).amax((1, 2), keepdim=True)
    span = high - low + torch.finfo(x.dtype).eps * (high.abs() + low.abs()) + math.sqrt(EPS_ABS)
    return torch.where(inside, (x - low) / span, torch.zeros_like(x))


def _entropy(prob: torch.Tensor, dims) -> torch.Tensor:
    tiny = torch.finfo(prob.dtype).tiny
    return -(prob * torch.log(prob.clamp_min(tiny))).sum(dims)


def mutual_information(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                       bins: int = 32, normalized: bool = False, sigma_bins: float = 0.5) -> torch.Tensor:
    """Mutual information (nats) from a Parzen-window joint histogram, (B,).

    Each image is min-max normalised over the mask to [0, 1]. Bin centres are
    ``c_k = k / (bins - 1)``, k = 0..bins-1 (so the extreme values sit on the
    first and last centre). Pixel value v contributes to bin k with the
    Gaussian weight ``exp(-(v - c_k)**2 / (2 s**2))``, ``s = sigma_bins / (bins - 1)``,
    normalised over k so that each pixel adds exactly its mask weight.
    Joint ``P[k, l] = sum_i p_i K_k(a_i) K_l(b_i)``, p_i = w_i / sum(w);
    ``MI = H(A) + H(B) - H(A, B)`` with ``H = -sum P log P``.
    ``normalized=True`` gives ``NMI = (H(A) + H(B)) / H(A, B)`` in [1, 2].

    The kernel smooths the histogram (that is what makes MI differentiable):
    for an image with itself, MI equals the entropy of its grey levels as long
    as the levels' kernels do not overlap (levels several s apart), but NMI
    is then below 2, by an amount set by the kernel's own entropy; it tends to
    2 as ``sigma_bins`` -> 0. Defaults: 32 bins suit the 2.5k..40k pixels of
    50x50..200x200 images (1..40 samples per joint bin); sigma_bins = 0.5
    puts ~80 % of a centred pixel's weight in its own bin and keeps the
    estimate smooth in the intensities.
    """
    a, b, w, _, dtype = _prepare(drr, xray, mask)
    bins = _check_int(bins, "bins", 2)
    sigma_bins = _check_sigma(sigma_bins, "sigma_bins", allow_zero=False)
    inside = w > 0
    p = (w / w.sum((1, 2), keepdim=True)).flatten(1)
    centres = torch.linspace(0.0, 1.0, bins, dtype=a.dtype, device=a.device)
    scale = 1.0 / (2.0 * (sigma_bins / (bins - 1)) ** 2)

    def kernel(x: torch.Tensor) -> torch.Tensor:
        values = _minmax(x, inside).flatten(1)
        logits = -scale * (values[..., None] - centres) ** 2  # (B, N, bins)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True).detach())
        return weights / weights.sum(-1, keepdim=True)

    joint = (kernel(a) * p[..., None]).transpose(1, 2) @ kernel(b)  # (B, bins, bins)
    h_a = _entropy(joint.sum(2), 1)
    h_b = _entropy(joint.sum(1), 1)
    h_ab = _entropy(joint, (1, 2))
    if normalized:
        return ((h_a + h_b) / h_ab.clamp_min(torch.finfo(h_ab.dtype).tiny)).to(dtype)
    return (h_a + h_b - h_ab).to(dtype)


# --------------------------------------------------------------------------
# Residuals for least squares
# --------------------------------------------------------------------------


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


def gradient_ncc_residual(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None,
                          sigma: float = 1.0) -> torch.Tensor:
    """Residual (B, 2 (H*W + 1)) with ``(r**2).sum(-1) == 1 - gradient_ncc``: row- and column-gradient ZNCC residuals / sqrt(2)."""
    a, b, w, masked, dtype = _prepare(drr, xray, mask)
    rows, cols = _gradient_stats(a, b, w, masked, sigma)
    return (torch.cat([rows.residual(), cols.residual()], 1) / math.sqrt(2.0)).to(dtype)


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


# --------------------------------------------------------------------------
# Registries and reports
# --------------------------------------------------------------------------

SIMILARITIES: dict[str, Similarity] = {
    "zncc": zncc,
    "patch_zncc": patch_zncc,
    "multiscale_zncc": multiscale_zncc,
    "gradient_ncc": gradient_ncc,
    "ssim": ssim,
    "css": css,
    "mi": mutual_information,
}
"""Similarity measures by name; each ``f(drr, xray, mask=None) -> (B,)``, higher = more similar."""

RESIDUALS: dict[str, Similarity] = {
    "zncc": zncc_residual,
    "patch_zncc": patch_zncc_residual,
    "multiscale_zncc": multiscale_zncc_residual,
    "gradient_ncc": gradient_ncc_residual,
    "mse": mse_residual,
}
"""Least-squares residuals by name; each ``r(drr, xray, mask=None) -> (B, M)`` with ||r||**2 = 1 - similarity (MSE for "mse")."""


def get_similarity(name: str) -> Similarity:
    """The similarity function called ``name`` (a key of ``SIMILARITIES``)."""
    if name not in SIMILARITIES:
        raise InputError(f"unknown similarity {name!r}; valid names: {', '.join(sorted(SIMILARITIES))}")
    return SIMILARITIES[name]


def get_residual(name: str) -> Similarity:
    """The least-squares residual called ``name`` (a key of ``RESIDUALS``)."""
    if name not in RESIDUALS:
        kind = "has no least-squares residual" if name in SIMILARITIES else "is not a known residual"
        raise InputError(
            f"similarity {name!r} {kind}; residuals exist for: {', '.join(sorted(RESIDUALS))} "
            "(use a gradient-based optimiser for the others)"
        )
    return RESIDUALS[name]


def image_metrics(drr: torch.Tensor, xray: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """{"ncc": zncc, "ssim": ssim, "css": css} of ONE image pair, as Python floats, for reports."""
    a, b, w, _, _ = _prepare(drr, xray, mask)
    if a.shape[0] != 1:
        raise InputError(f"image_metrics compares one image pair, got a batch of {a.shape[0]}; call it per pair")
    with torch.no_grad():
        a, b, w = a.detach(), b.detach(), w.detach()
        return {"ncc": float(zncc(a, b, w)), "ssim": float(ssim(a, b, w)), "css": float(css(a, b, w))}
