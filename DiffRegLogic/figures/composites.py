"""Pictures of a registration: the X-ray with DRR edges, checkerboards, blends, differences, labelled panels.

Every function returns an RGB image as a numpy array (H, W, 3) uint8 that
`save_png` writes to disk; drawing uses numpy and Pillow (for labels).

- `edge_overlay`: the X-ray in grey with the DRR's edges drawn on top in
  colour, the usual way to judge a 2D/3D registration by eye.
- `checkerboard`: alternating squares of two images, each windowed on its own.
- `before_after`: two edge overlays side by side with a label on each.
- `overlay_rgb`: fixed in magenta, moving in green.

Images may be numpy arrays or torch tensors (H, W) of any float dtype (a
leading batch axis of 1, (1, H, W), is dropped); tensors are detached and
copied to the CPU. X-ray and DRR are each windowed to 8 bits between their
own 0.5 and 99.5 percentiles (`DiffRegLogic.xray.files.to_uint8`), so their
intensity scales need not agree. The float maps behind `checkerboard` and
`difference`, shared with the slice views of `DiffRegLogic.mrml`, are in
`compare`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from ..filters import check_sigma, gaussian_blur
from ..xray.files import to_uint8
from .compare import checkerboard_map, difference_map

EDGE_SIGMA = 1.0
"""Gaussian smoothing (pixels) of the DRR before its gradient is taken."""

EDGE_PERCENTILE = 91.0
"""Pixels whose gradient magnitude is in the top 9 % count as edges ..."""

EDGE_FLOOR = 0.25
"""... provided it is at least this fraction of the 99.5th percentile of the
magnitude, so that a DRR with few edges (a flat background) does not get its
noise or its flat areas drawn."""

SEPARATOR_PX = 4
"""Width of the white bar between the panels of `before_after`."""

_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------
# Images in, images out
# --------------------------------------------------------------------------


def _image(image, name: str) -> np.ndarray:
    """A numpy float64 (H, W) copy of an image given as array or tensor, (H, W) or (1, H, W)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric (H, W) array or tensor, not {type(image).__name__}") from exc
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"{name} must be a 2D image (H, W); got shape {tuple(array.shape)}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputError(f"{name} has {bad} non-finite pixels (NaN or inf); replace them before drawing")
    return array


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{name_a} shape {tuple(a.shape)} and {name_b} shape {tuple(b.shape)} differ; "
            "render the DRR on the X-ray's detector (same rows and columns)"
        )


def _color(color, name: str = "color") -> tuple[int, int, int]:
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be three integers 0-255 (R, G, B); got {color!r}") from exc
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise InputError(f"{name} must be three integers 0-255 (R, G, B); got {color!r}")
    return rgb


def drr_edges(drr, sigma: float = EDGE_SIGMA, percentile: float = EDGE_PERCENTILE) -> np.ndarray:
    """Edge mask (H, W) bool of a DRR: outlines of bones and organs.

    The DRR is smoothed with a Gaussian of ``sigma`` pixels (the shared
    `DiffRegLogic.filters.gaussian_blur`: cut at 4 sigma, replicated
    borders), its gradient
    magnitude taken by central differences, and the pixels at or above the
    ``percentile``-th percentile of the magnitude (default: the top 9 %) kept,
    but never pixels below `EDGE_FLOOR` times the 99.5th percentile. A flat
    DRR has no edges.
    """
    image = _image(drr, "drr")
    if not 0.0 <= percentile < 100.0:
        raise InputError(f"edge percentile must be in [0, 100); got {percentile}")
    smooth = gaussian_blur(torch.from_numpy(image), check_sigma(sigma, "edge sigma")).numpy()
    if min(smooth.shape) < 2:
        return np.zeros(smooth.shape, dtype=bool)
    gy, gx = np.gradient(smooth)
    magnitude = np.hypot(gy, gx)
    peak = float(np.percentile(magnitude, 99.5))
    if peak <= 0.0:
        return np.zeros(magnitude.shape, dtype=bool)
    threshold = max(float(np.percentile(magnitude, percentile)), EDGE_FLOOR * peak)
    return magnitude >= threshold


def edge_overlay(xray, drr, color: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """The X-ray in grey with the DRR's edges (`drr_edges`) drawn in ``color``.

    ``xray`` and ``drr`` are (H, W) images of the same shape; returns (H, W, 3)
    uint8. Pixels off the edges are grey, R = G = B = ``io.to_uint8(xray)``.
    """
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")
    rgb = np.repeat(to_uint8(fixed)[:, :, None], 3, axis=2)
    rgb[drr_edges(moving)] = _color(color)
    return rgb


def checkerboard(xray, drr, tiles: int = 8) -> np.ndarray:
    """Alternating square tiles of two images, (H, W, 3) uint8 grey.

    ``tiles`` squares fit along the shorter side (the rule of
    `compare.checkerboard_mask`); the tile at the top left (and every tile an
    even number of steps from it) shows ``xray``, the others ``drr``. Each
    image is windowed to grey on its own percentiles.
    """
    a = _image(xray, "xray")
    b = _image(drr, "drr")
    _same_shape(a, b, "xray", "drr")
    grey = checkerboard_map(to_uint8(a), to_uint8(b), tiles).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _font(size: int):
    """Pillow's default font at ``size`` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    """White text on a black box in the top left corner of an (H, W, 3) image."""
    if not text:
        return rgb
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    font = _font(12)
    tw, th = _text_size(draw, text, font)
    draw.rectangle((2, 2, 2 + tw + 8, 2 + th + 6), fill=(0, 0, 0))
    draw.text((6, 5), text, fill=_WHITE, font=font)
    return np.asarray(image).copy()


def before_after(xray, drr_before, drr_after, labels: Sequence[str] = ("before", "after")) -> np.ndarray:
    """Two `edge_overlay` panels side by side: the X-ray with the DRR before and after registration.

    Returns (H, 2 W + `SEPARATOR_PX`, 3) uint8: the panels are split by a
    white bar and each carries its label (white on black) in its top left
    corner.
    """
    if isinstance(labels, str) or len(labels) != 2:
        raise InputError(f"labels must be two strings (left panel, right panel); got {labels!r}")
    fixed = _image(xray, "xray")
    before = _image(drr_before, "drr_before")
    after = _image(drr_after, "drr_after")
    _same_shape(fixed, before, "xray", "drr_before")
    _same_shape(fixed, after, "xray", "drr_after")
    left = _label(edge_overlay(fixed, before), str(labels[0]))
    right = _label(edge_overlay(fixed, after), str(labels[1]))
    bar = np.full((fixed.shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([left, bar, right], axis=1)


def blend(xray, drr, opacity: float = 0.5, tint: Sequence[int] = (255, 170, 60)) -> np.ndarray:
    """The DRR over the X-ray as a slice view composites them, (H, W, 3) uint8.

    Both are windowed to grey on their own percentiles; the DRR is tinted
    with ``tint`` and drawn with ``opacity`` (0 = X-ray only, 1 = DRR only).
    """
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"opacity must be between 0 and 1; got {opacity!r}")
    back = np.repeat(to_uint8(fixed)[:, :, None].astype(np.float64), 3, axis=2)
    front = to_uint8(moving)[:, :, None].astype(np.float64) * (np.asarray(_color(tint, "tint")) / 255.0)
    return np.round((1 - opacity) * back + opacity * front).astype(np.uint8)


def difference(xray, drr) -> np.ndarray:
    """Z-scored X-ray minus z-scored DRR (`compare.difference_map`) in grey, (H, W, 3) uint8.

    Mid-grey (127.5, rounded) is 0; the window is symmetric at +-3 standard
    deviations (black = -3 SD, white = +3 SD).
    """
    fixed = _image(xray, "xray")
    moving = _image(drr, "drr")
    _same_shape(fixed, moving, "xray", "drr")
    grey = np.clip(127.5 + difference_map(fixed, moving) * (127.5 / 3.0), 0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def grey(image) -> np.ndarray:
    """One image (H, W) windowed on its own percentiles as a grey RGB picture (H, W, 3) uint8."""
    return np.repeat(to_uint8(_image(image, "image"))[:, :, None], 3, axis=2)


def panel_row(panels: Sequence, labels: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 panels of one height side by side with white bars, each labelled in its corner."""
    if len(panels) != len(labels) or not panels:
        raise InputError(f"give as many labels as panels (at least one); got {len(panels)} panels, {len(labels)} labels")
    arrays = [np.asarray(p, dtype=np.uint8) for p in panels]
    if any(a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != arrays[0].shape[0] for a in arrays):
        raise InputError("panels must be (H, W, 3) images of the same height")
    bar = np.full((arrays[0].shape[0], SEPARATOR_PX, 3), 255, dtype=np.uint8)
    out = []
    for i, (a, text) in enumerate(zip(arrays, labels)):
        if i:
            out.append(bar)
        out.append(_label(a, str(text)))
    return np.concatenate(out, axis=1)


def save_png(path: str | os.PathLike, rgb) -> Path:
    """Write an image (H, W, 3) or grey (H, W) uint8 to a PNG file, creating parent folders; returns the path."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InputError(
            f"save_png needs a uint8 image (H, W, 3) or (H, W); got {array.dtype} of shape {array.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


def overlay_rgb(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Colour overlay (H, W, 3) uint8: fixed in magenta (red + blue), moving in green.

    Where the two agree the picture is grey; misaligned edges show as magenta
    (only in the fixed image) and green (only in the moving image). Each image
    is windowed on its own percentiles.
    """
    f, m = to_uint8(fixed), to_uint8(moving)
    return np.stack([f, m, f], -1)
