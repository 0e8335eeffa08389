"""Checking and broadcasting the inputs of every similarity, and the regularised variance they divide by.

See `DiffRegLogic.similarity` for the conventions (shapes, masks, the eps
of constant images).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..filters import check_sigma as _check_sigma  # noqa: F401  (re-exported for the measures)

EPS_ABS = 1e-20
"""Absolute floor added to every variance that divides (intensity units squared; module docstring)."""


def _as_tensor(value, name: str) -> torch.Tensor:
    """A tensor, or a numpy array of numbers as one (any strides or byte order); InputError otherwise."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise InputError(f"{name} has numpy dtype {value.dtype}; pass numbers (a bool, integer or float array)")
        return torch.from_numpy(np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False)))
    raise InputError(f"{name} must be a torch tensor or numpy array, got {type(value).__name__}")


def _check_magnitude(a: torch.Tensor, b: torch.Tensor, inside: torch.Tensor) -> None:
    """Refuse NaN, infinite, or so large values inside the mask that their squares overflow ``a.dtype``."""
    limit = math.sqrt(torch.finfo(a.dtype).max) / 4  # (x - y)**2 of two such values stays finite
    for name, image in (("drr", a), ("xray", b)):
        with torch.no_grad():
            largest = float(torch.where(inside, image.detach().abs(), 0).amax())
        if not largest <= limit:  # NaN fails too
            if not math.isfinite(largest):
                raise InputError(f"{name} has NaN or infinite values where the mask weights it; replace them "
                                 "(e.g. torch.nan_to_num) or give them weight 0 in the mask")
            raise InputError(
                f"{name} has values up to {largest:.3g} where the mask weights it; similarities are computed in "
                f"{a.dtype}, where the moments of values beyond {limit:.3g} overflow: rescale the image "
                "(or give those pixels weight 0 in the mask)"
            )


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
    _check_magnitude(a, b, inside)
    if masked:
        zero = torch.zeros((), dtype=dtype, device=drr.device)
        a = torch.where(inside, a, zero)
        b = torch.where(inside, b, zero)
    return a, b, w, masked, out_dtype


def _check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (no maximum: None), else InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        shown = value if value < 10**15 else f"{float(value):.3g}"
        raise InputError(f"{name} must be at most {maximum}, got {shown}")
    return int(value)


def _regularised(var: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(var + eps, eps) with eps = u**2 * mean(x**2) + EPS_ABS, u = machine epsilon of the dtype."""
    u = torch.finfo(var.dtype).eps
    eps = (u * u) * (var + mean * mean) + EPS_ABS
    return var + eps, eps
