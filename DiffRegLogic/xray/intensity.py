"""Intensity conventions: turning stored X-ray values into the DRR's line-integral convention (bone bright).

What the stored values are (torch-free names, `INTENSITY_CONVENTIONS`):

* ``"line_integral"``: log image, bone bright (a DRR, a -log processed
  image): kept;
* ``"inverted"``: log image, bone dark: reflected about its open-field
  level, ``ref - v`` (ref = the `I0_PERCENTILE` percentile);
* ``"intensity"``: raw detector intensity, bone dark: ``-log(I / I0)``;
* ``"inverted_intensity"``: raw intensity shown inverted (bone bright,
  ``v = A - I``): ``I = max(v) - v + INVERTED_FLOOR_FRACTION * (max(v) -
  min(v))`` (the offset A is unknown; the most attenuating pixel is taken to
  pass that fraction of the image's range), then ``-log(I / I0)``;
* ``"auto"``: DICOM tags decide (`DiffRegLogic.xray.dicom`); without tags
  (other formats, or DICOM without a LIN/LOG relationship or MONOCHROME1)
  the values are kept and ``meta["intensity_source"] = "default"``, so that
  `DiffRegLogic.xray.convention.resolve_convention` may detect the
  convention from the image (and a DRR) before registration.

``meta["intensity_source"]`` says who decided: ``"user"`` (an explicit
name), ``"tags"`` (DICOM tags), ``"default"`` (nothing told).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # numpy is imported by the functions: the names below are read by the torch-free CLI parser
    import numpy as np

INTENSITY_CONVENTIONS = ("auto", "line_integral", "intensity", "inverted", "inverted_intensity")
"""``intensity`` choices of `read_xray`, `xray_from_array` and the command line (module docstring)."""
EXPLICIT_CONVENTIONS = INTENSITY_CONVENTIONS[1:]
"""The conventions `DiffRegLogic.xray.convention.detect_convention` chooses between."""
INVERTED_FLOOR_FRACTION = 0.01
"""Inverted raw intensity: the most attenuating pixel's intensity, as a fraction of the image's value range."""
I0_PERCENTILE = 99.9
"""Percentile of the (unmasked) image taken as the unattenuated intensity I0 in -log(I / I0),
and as the open-field level that inverted images are reflected about."""
INTENSITY_FLOOR = 1e-6
"""Raw intensities are clamped to ``INTENSITY_FLOOR * max(I)`` before the logarithm."""


def _apply_convention(values: np.ndarray, intensity: str, auto: tuple[str, str] | None, mask: np.ndarray,
                      meta: dict) -> np.ndarray:
    source = "user"
    if intensity == "auto":
        action, reason = auto if auto is not None else (
            "keep", f"{meta.get('format', 'this')} files carry no intensity tags: taken as a line integral (bone bright)")
        source = "tags" if auto is not None and _told_by_tags(action, reason) else "default"
    elif intensity == "intensity":
        action, reason = "log", "intensity='intensity' given: raw intensity, -log(I / I0) applied"
    elif intensity == "inverted":
        action, reason = "reflect", "intensity='inverted' given: log image, bone dark, reflected about the open field"
    elif intensity == "inverted_intensity":
        action, reason = "invert_log", ("intensity='inverted_intensity' given: inverted raw intensity, "
                                        "un-inverted, then -log(I / I0)")
    else:
        action, reason = "keep", "intensity='line_integral' given: values kept"
    meta["intensity_requested"] = intensity
    meta["intensity_reason"] = reason
    meta["intensity_source"] = source
    return convert_values(values, action, mask, meta)


def _told_by_tags(action: str, reason: str) -> bool:
    """Whether DICOM's auto decision came from an intensity tag (LIN/LOG relationship, MONOCHROME1), not a default."""
    return action != "keep" or reason.startswith(("PixelIntensityRelationship LIN", "PixelIntensityRelationship LOG"))


ACTIONS = {"line_integral": "keep", "inverted": "reflect", "intensity": "log", "inverted_intensity": "invert_log"}
"""Convention name -> conversion action of `convert_values`."""


def convert_values(values: np.ndarray, action: str, mask: np.ndarray | None, meta: dict) -> np.ndarray:
    """Stored values (H, W) float64 -> line integral (H, W), by action "keep" | "reflect" | "log" | "invert_log".

    ``mask`` (H, W) bool selects the pixels the percentiles are taken over
    (None or empty: all). Records what was done in ``meta`` (``intensity``,
    ``reflect_reference``, ``i0``, ...; ``meta["notes"]`` must be a list).
    """
    import numpy as np

    region = values[mask] if mask is not None and mask.any() else values.ravel()
    if action == "keep":
        meta["intensity"] = "line_integral"
        return values
    if action == "reflect":
        ref = float(np.percentile(region, I0_PERCENTILE))
        meta["intensity"] = "reflected"
        meta["reflect_reference"] = ref
        return ref - values
    if action == "invert_log":
        top, bottom = float(region.max()), float(region.min())
        if not top > bottom:
            raise InputError("inverted raw intensity: the image is constant where it is used; there is nothing to "
                             "convert (check the file and the mask)")
        offset = top + INVERTED_FLOOR_FRACTION * (top - bottom)
        meta["inversion_offset"] = offset
        out = _minus_log(offset - values, offset - region, meta)
        meta["intensity"] = "inverted_intensity"
        return out
    if action != "log":
        raise InputError(f"unknown intensity conversion {action!r}; use one of keep, reflect, log, invert_log")
    return _minus_log(values, region, meta)


def _minus_log(values: np.ndarray, region: np.ndarray, meta: dict) -> np.ndarray:
    import numpy as np

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
