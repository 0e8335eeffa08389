"""Collimated borders, crops and flips of an X-ray, with the detector following the pixels.

`detect_collimation` finds constant borders (collimator shadows, padding);
`crop_xray`/`crop_detector` and `flip_detector` keep every kept pixel on its
physical ray: a flip mirrors the principal point (cx -> W-1-cx,
cy -> H-1-cy), a crop shifts it (cx - left, cy - top) and shrinks the
detector.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import check_number
from .image import XRay

COLLIMATION_TOL = 1e-6
"""A border row/column is collimated when its std and its offset from the border value are at most
``COLLIMATION_TOL * (max - min)`` of the image."""


def detect_collimation(image, tol: float = COLLIMATION_TOL) -> tuple[int, int, int, int]:
    """Margins (top, bottom, left, right) in pixels of constant borders (collimator, blank, padding).

    A border band is the run of outermost rows (or columns) that are constant
    and equal to the outermost one, both within ``tol * (max - min)`` of the
    image: collimator shadows, zero padding and fully saturated borders.
    Rows and columns are peeled alternately (on what is left) until nothing
    changes, so bands on all four sides are found whatever value the corners
    take from either band. At least two rows and columns are always kept; a
    constant image gives (0, 0, 0, 0). ``image``: (H, W) tensor or array.
    """
    a = _as_2d_array(image, "detect_collimation")
    tol = check_number("detect_collimation tol", tol, 0.0, 1.0)
    if not np.isfinite(a).all():
        raise InputError("detect_collimation: the image has NaN or infinite values; fix them first")
    with np.errstate(over="ignore", invalid="ignore"):  # values near float64's limit: an inf span or std, no warning
        span = float(a.max() - a.min()) if a.size else 0.0
        return (0, 0, 0, 0) if span == 0.0 else _peel(a, tol * span)


def _peel(a: np.ndarray, thr: float) -> tuple[int, int, int, int]:
    h, w = a.shape
    top = bottom = left = right = 0
    changed = True
    while changed:
        changed = False
        sub = a[top:h - bottom, left:w - right]
        if sub.shape[1] >= 2:
            n = _band(sub, thr, room=sub.shape[0] - 2)
            top += n
            sub = sub[n:]
            m = _band(sub[::-1], thr, room=sub.shape[0] - 2)
            bottom += m
            sub = sub[:sub.shape[0] - m]
            changed |= bool(n or m)
        if sub.shape[0] >= 2:
            n = _band(sub.T, thr, room=sub.shape[1] - 2)
            left += n
            sub = sub[:, n:]
            m = _band(sub.T[::-1], thr, room=sub.shape[1] - 2)
            right += m
            changed |= bool(n or m)
    return (top, bottom, left, right)


def _band(lines: np.ndarray, thr: float, room: int) -> int:
    """Number of leading rows of ``lines`` that are constant and equal to the first, at most ``room``."""
    if room <= 0 or lines.shape[0] == 0:
        return 0
    ref = lines[0].mean()
    flat = (lines.std(axis=1) <= thr) & (np.abs(lines.mean(axis=1) - ref) <= thr)
    n = int(np.argmin(flat)) if not flat.all() else lines.shape[0]
    return min(n, room)


def crop_detector(detector: Detector, top: int, bottom: int, left: int, right: int) -> Detector:
    """The detector of the crop ``[top : rows - bottom, left : cols - right]``.

    Same sdd and spacing, ``rows - top - bottom`` by ``cols - left - right``
    pixels, principal point ``(cx - left, cy - top)`` with (cx, cy) the
    original's (default ((W-1)/2, (H-1)/2)): every kept pixel keeps its ray.
    """
    _check_detector(detector, "crop_detector")
    top, bottom, left, right = _check_margins((top, bottom, left, right), detector.rows, detector.cols)
    _, _, _, cx, cy = detector.tensors()
    pp = detector.principal_point
    if isinstance(pp, torch.Tensor):
        new_pp = pp - pp.new_tensor([left, top])
    else:
        new_pp = (float(cx) - left, float(cy) - top) if pp is None else (pp[0] - left, pp[1] - top)
    return replace(detector, rows=detector.rows - top - bottom, cols=detector.cols - left - right,
                   principal_point=new_pp)


def flip_detector(detector: Detector, rows: bool = False, cols: bool = False) -> Detector:
    """The detector of the image mirrored up-down (``rows``) and/or left-right (``cols``).

    Size, sdd and spacing stay; the principal point moves with the pixels:
    cx -> W-1-cx, cy -> H-1-cy (a centred principal point stays centred).
    """
    _check_detector(detector, "flip_detector")
    pp = detector.principal_point
    if pp is None or not (rows or cols):
        return detector
    cx = (detector.cols - 1) - pp[0] if cols else pp[0]
    cy = (detector.rows - 1) - pp[1] if rows else pp[1]
    new_pp = torch.stack([cx, cy]) if isinstance(pp, torch.Tensor) else (cx, cy)
    return replace(detector, principal_point=new_pp)


def crop_xray(xray: XRay, top: int, bottom: int, left: int, right: int) -> XRay:
    """Remove ``top``, ``bottom``, ``left``, ``right`` pixels from the borders.

    Pixel (r, c) of the result is pixel (r + top, c + left) of ``xray``; the
    detector shrinks and its principal point shifts (`crop_detector`) so that
    every kept pixel keeps its physical ray; the mask is cropped alike and
    ``meta["crop"]`` accumulates the margins relative to the image as read.
    """
    if not isinstance(xray, XRay):
        raise InputError(f"crop_xray needs an XRay (from read_xray or xray_from_array), got {type(xray).__name__}")
    h, w = xray.shape
    top, bottom, left, right = _check_margins((top, bottom, left, right), h, w)
    rows, cols = slice(top, h - bottom), slice(left, w - right)
    meta = copy.deepcopy(xray.meta)
    previous = meta.get("crop", (0, 0, 0, 0))
    meta["crop"] = tuple(int(p + n) for p, n in zip(previous, (top, bottom, left, right)))
    return XRay(
        image=xray.image[..., rows, cols].clone(),
        detector=None if xray.detector is None else crop_detector(xray.detector, top, bottom, left, right),
        pixel_spacing=xray.pixel_spacing,
        clinical=xray.clinical,
        mask=None if xray.mask is None else xray.mask[..., rows, cols].clone(),
        meta=meta,
    )


def _check_margins(margins, rows: int, cols: int) -> tuple[int, int, int, int]:
    try:
        values = tuple(margins)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise InputError(
            f"crop margins must be four non-negative integers (top, bottom, left, right) in pixels, got {margins!r}"
        )
    top, bottom, left, right = (int(v) for v in values)
    if top + bottom >= rows or left + right >= cols:
        raise InputError(
            f"crop (top={top}, bottom={bottom}, left={left}, right={right}) leaves no pixels of a "
            f"{rows} x {cols} image; use smaller margins"
        )
    return top, bottom, left, right


def _check_detector(detector, what: str) -> None:
    if not isinstance(detector, Detector):
        raise InputError(f"{what} needs a Detector, got {type(detector).__name__}")


def _as_2d_array(image, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    try:
        a = np.asarray(image)
    except (TypeError, ValueError):  # ragged lists
        a = np.asarray(None)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what}: expected a 2D image (H, W) of real numbers, got {type(image).__name__}")
    a = a.astype(np.float64, copy=False)
    if a.ndim != 2:
        raise InputError(f"{what}: expected one 2D image (H, W), got shape {a.shape}")
    return a
