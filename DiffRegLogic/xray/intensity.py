"""Intensity conventions: turning stored X-ray values into the DRR's line-integral convention (bone bright).

``"line_integral"`` keeps the values; ``"intensity"`` applies -log(I / I0);
``"auto"`` lets DICOM tags decide (`DiffRegLogic.xray.dicom`), and means
``"line_integral"`` for other formats. A log image stored bone dark is
reflected about its open-field level.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

INTENSITY_CONVENTIONS = ("auto", "line_integral", "intensity")
I0_PERCENTILE = 99.9
"""Percentile of the (unmasked) image taken as the unattenuated intensity I0 in -log(I / I0),
and as the open-field level that inverted images are reflected about."""
INTENSITY_FLOOR = 1e-6
"""Raw intensities are clamped to ``INTENSITY_FLOOR * max(I)`` before the logarithm."""


def _apply_convention(values: np.ndarray, intensity: str, auto: tuple[str, str] | None, mask: np.ndarray,
                      meta: dict) -> np.ndarray:
    if intensity == "auto":
        action, reason = auto if auto is not None else (
            "keep", f"{meta.get('format', 'this')} files carry no intensity tags: taken as a line integral (bone bright)")
    elif intensity == "intensity":
        action, reason = "log", "intensity='intensity' given: raw intensity, -log(I / I0) applied"
    else:
        action, reason = "keep", "intensity='line_integral' given: values kept"
    meta["intensity_requested"] = intensity
    meta["intensity_reason"] = reason
    region = values[mask] if mask.any() else values.ravel()
    if action == "keep":
        meta["intensity"] = "line_integral"
        return values
    if action == "reflect":
        ref = float(np.percentile(region, I0_PERCENTILE))
        meta["intensity"] = "reflected"
        meta["reflect_reference"] = ref
        return ref - values
    return _minus_log(values, region, meta)


def _minus_log(values: np.ndarray, region: np.ndarray, meta: dict) -> np.ndarray:
    top = float(values.max())
    if top <= 0:
        raise InputError(
            "intensity conversion -log(I / I0) needs positive intensities, but the image's maximum is "
            f"{top:g}; these values are not raw intensities: use intensity='line_integral'"
        )
    floor = INTENSITY_FLOOR * top
    i0 = float(np.percentile(np.maximum(region, floor), I0_PERCENTILE))
    clamped = int((values < floor).sum())
    meta["intensity"] = "intensity"
    meta["i0"] = i0
    meta["i0_percentile"] = I0_PERCENTILE
    meta["intensity_floor"] = floor
    if clamped:
        meta["notes"].append(f"{clamped} pixel(s) below the floor {floor:g} clamped before the logarithm")
    return np.log(i0) - np.log(np.maximum(values, floor))
