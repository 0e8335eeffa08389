"""Which intensity convention an X-ray is stored in, detected from the image (and a DRR), and the conversion.

The four conventions (`DiffRegLogic.xray.intensity`): ``"line_integral"``
(log, bone bright), ``"inverted"`` (log, bone dark), ``"intensity"`` (raw,
bone dark), ``"inverted_intensity"`` (raw, bone bright). Registration
compares with a DRR, a line integral, so a wrong polarity flips the sign of
every correlation and a missing logarithm bends the contrast.

`detect_convention` decides

* **with a DRR** at the start pose (on the X-ray's detector): each of the
  four conversions is correlated with it (ZNCC over the mask); the highest
  wins. Polarity is then certain (the correlations differ in sign); log
  against raw is decided by which conversion is linear in the DRR, which
  survives start poses within ~10 deg / 20 mm;
* **from the image alone**: polarity from where the attenuation is. The
  centre of the field (the middle half of rows and columns) holds the
  patient's thickest part, the border ring (``BORDER_FRACTION`` of each
  side) the thinnest or air: ``polarity = (median(centre) -
  median(border)) / IQR`` > 0 means bone bright. Log against raw from the
  shape of the histogram: raw intensity ``I = I0 exp(-L)`` is convex in L,
  which piles the attenuating body towards 0 and stretches the open field
  and lungs into a long bright tail, so the bone-dark oriented image has a
  skewness above ``RAW_SKEWNESS`` (0.5 here; log images of the phantom and
  chest CT lie within +-0.3, raw ones at 0.8..1.5). This is a heuristic:
  the reason says so, and a DRR should be given when one is available.

`resolve_convention` applies it to an `XRay` whose convention nobody stated
(``meta["intensity_source"] == "default"``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .image import XRay
from .intensity import ACTIONS, EXPLICIT_CONVENTIONS, convert_values

BORDER_FRACTION = 0.1
"""Width of the border ring of the image-only polarity test, as a fraction of each side."""
RAW_FLOOR_FRACTION = 1e-3
"""Raw intensities are floored at this fraction of the maximum before the logarithm (line integral <= 6.9)."""
RAW_SKEWNESS = 0.5
"""Skewness of the bone-dark oriented image above which it is taken as raw intensity (no DRR)."""


@dataclass(frozen=True)
class Detection:
    """What `detect_convention` found: the convention, a score per convention (higher = more likely) and why."""

    convention: str
    scores: dict
    reason: str


def _values(image, name: str = "image") -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    try:
        values = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an (H, W) array of numbers, got {type(image).__name__}") from None
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"{name} must be one 2D image (H, W), got shape {values.shape}")
    return values


def _mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _values(mask, "mask")
    if m.shape != shape:
        raise InputError(f"mask has shape {m.shape} but the image is {shape}; pass a mask of the image's size")
    return m > 0


def _checked(image, mask) -> tuple[np.ndarray, np.ndarray]:
    values = _values(image)
    inside = _mask(mask, values.shape)
    if not inside.any():
        raise InputError("the mask selects no pixel; pass a mask that selects the X-ray's field, or none")
    region = values[inside]
    if not np.isfinite(region).all():
        raise InputError(f"the X-ray has {int((~np.isfinite(region)).sum())} NaN or infinite pixel(s) where the mask "
                         "is set; fill them or mask them out before detecting the intensity convention")
    if region.max() == region.min():
        raise InputError(f"the X-ray is constant (every pixel = {region.flat[0]:g}) where it is used: there is no "
                         "structure to tell the intensity convention from; check the file and the frame")
    return values, inside


def apply_convention(image, convention: str, mask=None) -> torch.Tensor:
    """(H, W) float64 line integral (bone bright) from an image stored in ``convention`` (module docstring).

    ``mask`` (H, W) bool or None: the pixels the open-field percentiles are
    taken over (`DiffRegLogic.xray.intensity.convert_values`). Unlike
    ``read_xray(intensity="intensity")`` (floor 1e-6 x max), raw intensities
    are floored before the logarithm at the larger of ``RAW_FLOOR_FRACTION``
    x max and the smallest positive value: windowed or 8-bit raw images clip
    the densest pixels to 0, whose logarithm would be an outlier; they get
    the value of one quantisation step instead.
    """
    if convention not in EXPLICIT_CONVENTIONS:
        raise InputError(f"unknown intensity convention {convention!r}; use one of {', '.join(EXPLICIT_CONVENTIONS)}")
    values, inside = _checked(image, mask)
    return torch.from_numpy(_convert(values, convention, inside, {"notes": []}))


def _convert(values: np.ndarray, convention: str, inside: np.ndarray, meta: dict) -> np.ndarray:
    values = values.copy()
    if convention == "intensity":  # a windowed / 8-bit raw image clips dense pixels to ~0: floor them as inverted ones
        region = values[inside]
        positive = region[region > 0]
        floor = max(RAW_FLOOR_FRACTION * float(region.max()), float(positive.min()) if positive.size else 0.0)
        clipped = int((values[inside] < floor).sum())
        if clipped:
            meta["notes"].append(f"{clipped} pixel(s) below {floor:g} raised to it before the logarithm")
        values = np.maximum(values, floor)
    return convert_values(values, ACTIONS[convention], inside, meta)


def _zncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _image_statistics(values: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """(polarity, skewness): > 0 polarity = bone bright; skewness of the bone-dark oriented pixels."""
    h, w = values.shape
    bh, bw = max(1, round(BORDER_FRACTION * h)), max(1, round(BORDER_FRACTION * w))
    ring = np.zeros_like(inside)
    ring[:bh], ring[h - bh:], ring[:, :bw], ring[:, w - bw:] = True, True, True, True
    centre = np.zeros_like(inside)
    centre[h // 4:h - h // 4, w // 4:w - w // 4] = True
    region = values[inside]
    q1, q3 = np.percentile(region, [25, 75])
    spread = q3 - q1 if q3 > q1 else region.max() - region.min()
    ring &= inside
    centre &= inside
    if not ring.any() or not centre.any():
        polarity = 0.0
    else:
        polarity = float(np.median(values[centre]) - np.median(values[ring])) / spread
    dark = -region if polarity > 0 else region
    dark = dark - dark.mean()
    skewness = float((dark ** 3).mean() / max((dark ** 2).mean(), 1e-300) ** 1.5)
    return polarity, skewness


def detect_convention(image, drr=None, mask=None) -> Detection:
    """Detect the convention an (H, W) X-ray is stored in (module docstring), with or without a DRR (H, W).

    ``mask`` (H, W) bool or None: the pixels to use. Raises `InputError` for
    a constant or non-finite image, a DRR of another size, or a constant DRR.
    """
    values, inside = _checked(image, mask)
    if drr is not None:
        reference = _values(drr, "drr")
        if reference.shape != values.shape:
            raise InputError(f"the DRR is {reference.shape} but the X-ray is {values.shape}; render the DRR on the "
                             "X-ray's detector")
        ref = reference[inside]
        if not np.isfinite(ref).all() or ref.max() == ref.min():
            raise InputError("the DRR is constant or not finite where the X-ray is used: the start pose does not "
                             "see the CT; give a start pose that does, or detect without a DRR")
        scores = {}
        for convention in EXPLICIT_CONVENTIONS:
            converted = _convert(values, convention, inside, {"notes": []})[inside]
            scores[convention] = _zncc(converted, ref)
        best = max(scores, key=scores.get)
        ranked = sorted(scores.values(), reverse=True)
        reason = (f"correlation with the DRR at the start pose: {best} {scores[best]:.3f} (next best "
                  f"{ranked[1]:.3f}); " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        return Detection(best, scores, reason)
    polarity, skewness = _image_statistics(values, inside)
    raw = skewness - RAW_SKEWNESS
    scores = {"line_integral": polarity - raw, "inverted": -polarity - raw,
              "intensity": -polarity + raw, "inverted_intensity": polarity + raw}
    best = max(scores, key=scores.get)
    bright = "bone bright" if polarity > 0 else "bone dark"
    kind = "raw intensity" if raw > 0 else "log image"
    reason = (f"image statistics only (a heuristic; give a DRR at the start pose for a reliable decision): "
              f"centre minus border median = {polarity:+.2f} IQR -> {bright}; skewness of the bone-dark "
              f"oriented image {skewness:+.2f} ({'above' if raw > 0 else 'below'} {RAW_SKEWNESS:g}) -> {kind}")
    return Detection(best, scores, reason)


def resolve_convention(xray: XRay, drr=None) -> XRay:
    """``xray`` converted to the detected convention when nobody stated one, else ``xray`` itself.

    "Nobody stated one" = ``xray.meta["intensity_source"] == "default"``
    (``intensity="auto"`` and no DICOM intensity tag: the stored values were
    kept). Then a new `XRay` with the converted image and, in its meta,
    ``intensity_detected`` (the convention), ``intensity_detection_reason``,
    ``intensity_scores``, ``intensity`` (the conversion) and
    ``intensity_source = "detected"``. ``drr``: (H, W) DRR at the start
    pose on the X-ray's detector, or None (image statistics only).
    """
    if not isinstance(xray, XRay):
        raise InputError(f"resolve_convention needs an XRay, got {type(xray).__name__}")
    if xray.meta.get("intensity_source") != "default":
        return xray
    mask = None if xray.mask is None else xray.mask.cpu().numpy()
    detection = detect_convention(xray.image, drr, mask)
    values, inside = _checked(xray.image, mask)
    meta = {**xray.meta, "notes": list(xray.meta.get("notes", []))}
    image = _convert(values, detection.convention, inside, meta)
    meta.update(intensity_detected=detection.convention, intensity_detection_reason=detection.reason,
                intensity_scores=dict(detection.scores), intensity_source="detected",
                intensity_reason=f"detected: {detection.reason}")
    return dataclasses.replace(xray, image=torch.from_numpy(image).to(xray.image.dtype), meta=meta)


DETECTION_PIXELS = 128
"""Largest side (pixels) of the DRR `resolve_at_pose` renders to detect a convention (then resized to the X-ray)."""


def resolve_at_pose(xray: XRay, detector, volume, pose, renderer: str = "siddon", **render_options) -> XRay:
    """`resolve_convention` against a coarse DRR of ``volume`` at ``pose`` (4, 4) on ``detector``.

    Does nothing (returns ``xray``) unless its convention was not stated
    (``meta["intensity_source"] == "default"``). The DRR is rendered at
    most `DETECTION_PIXELS` a side, without gradients, and resized
    (bilinear) to the X-ray's shape. Used by ``diffreg register`` and the
    Slicer panel, so both detect the same way.
    """
    if not isinstance(xray, XRay):
        raise InputError(f"resolve_at_pose needs an XRay, got {type(xray).__name__}")
    if xray.meta.get("intensity_source") != "default":
        return xray
    import torch.nn.functional as F

    from ..drr.rendering import render

    coarse = detector.downsample(max(1.0, max(detector.shape) / float(DETECTION_PIXELS)))
    pose = torch.as_tensor(pose, dtype=torch.float64).to(volume.mu.device)
    with torch.no_grad():
        drr = render(volume, coarse, pose, renderer, **render_options)[0]
        drr = F.interpolate(drr[None, None].to(torch.float64), size=tuple(xray.image.shape), mode="bilinear",
                            align_corners=False)[0, 0].cpu()
    return resolve_convention(xray, drr)
