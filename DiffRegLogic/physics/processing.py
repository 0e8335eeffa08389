"""What a C-arm does to an image before storing it, and its collimator: log, window, gamma, unsharp, 8 bits, inversion.

`process` turns the detected intensity I/I0 (B, H, W) into the stored image,
in this order (`Processing`, each step optional):

1. **log**: -log(I/I0) (the line integral, bone bright) or the raw I/I0
   (bone dark);
2. **window/level**: the values between the ``window`` percentiles (low,
   high) of each image map linearly onto [0, 1], clipped outside:
   ``window_level(v, level, width) = clip((v - level + width/2) / width, 0, 1)``;
3. **gamma**: ``v ** gamma`` on the windowed [0, 1] values;
4. **unsharp masking** (edge enhancement): ``v + amount (v - G_sigma * v)``
   with G a Gaussian of ``unsharp_sigma_mm`` (mm on the detector): a
   constant image is unchanged; windowed values are clipped to [0, 1] again
   (the overshoot at edges saturates the display range);
5. **inversion** (polarity): ``v -> min + max - v`` (each image's own range),
   which reverses the order of the values and keeps their range;
6. **quantisation** to ``bits`` bits over each image's own [min, max]:
   at most 2^bits distinct values (8 bits: 256).

The stored image's **intensity convention** follows from ``log`` and
``invert`` (`convention_of`): ``"line_integral"`` (log, bone bright),
``"inverted"`` (log, bone dark), ``"intensity"`` (raw, bone dark),
``"inverted_intensity"`` (raw, bone bright); windowing, gamma, unsharp
masking and quantisation keep the polarity.

**Collimation** (`Collimation`, `collimation_mask`): the collimator's blades
(a rectangular field) or an iris (a circular field) let ``transmission`` of
the beam through outside the field; it acts on the primary intensity before
scatter, noise and the processing (`DiffRegLogic.physics.xray_simulation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..filters import gaussian_blur
from ..geometry.detector import Detector
from ..limits import MAX_BLUR_PX, check_number

CONVENTIONS = ("line_integral", "inverted", "intensity", "inverted_intensity")
"""Intensity conventions of a stored image: log bone bright, log bone dark, raw bone dark, raw bone bright."""
GAMMA_RANGE = (0.05, 20.0)
"""Accepted display gamma."""
MAX_UNSHARP_AMOUNT = 20.0
"""Largest unsharp-masking gain (clinical edge enhancement: 0.5-3)."""
BITS_RANGE = (1, 16)
"""Bits of the quantised image."""
INTENSITY_FLOOR = 1e-12
"""I/I0 is floored here before the logarithm (a pixel that counted no photon)."""
COLLIMATION_SHAPES = ("rectangle", "circle")


# ---------------------------------------------------------------------------- closed-form steps


def _images(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim not in (2, 3):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"{name} must be a floating-point tensor (H, W) or (B, H, W), got {got}")
    return image


def window_level(image: torch.Tensor, level: float, width: float) -> torch.Tensor:
    """clip((image - level + width / 2) / width, 0, 1): [level - width/2, level + width/2] -> [0, 1]."""
    image = _images(image)
    level = check_number("window level", level)
    width = check_number("window width", width, 0.0, None, low_open=True)
    return ((image - level + width / 2) / width).clamp(0, 1)


def percentile_window(image: torch.Tensor, low: float, high: float) -> tuple[float, float]:
    """(level, width) of the window between the ``low`` and ``high`` percentiles (0..100) of ``image``.

    A constant image gets width 1 (so that windowing it is defined).
    """
    image = _images(image)
    low = check_number("window low percentile", low, 0.0, 100.0)
    high = check_number("window high percentile", high, 0.0, 100.0)
    if not low < high:
        raise InputError(f"the window's low percentile ({low:g}) must be below its high one ({high:g})")
    q = torch.quantile(image.detach().reshape(-1).to(torch.float64),
                       torch.tensor([low / 100, high / 100], dtype=torch.float64))
    lo, hi = float(q[0]), float(q[1])
    width = hi - lo if hi > lo else 1.0
    return (lo + hi) / 2, width


def apply_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """image ** gamma of values in [0, 1] (clamped there first)."""
    gamma = check_number("gamma", gamma, *GAMMA_RANGE)
    return _images(image).clamp(0, 1) ** gamma


def unsharp_mask(image: torch.Tensor, sigma_px: float | tuple[float, float], amount: float) -> torch.Tensor:
    """image + amount (image - Gaussian(image, sigma_px)): edges enhanced, constants unchanged (shape kept)."""
    image = _images(image)
    amount = check_number("unsharp amount", amount, 0.0, MAX_UNSHARP_AMOUNT)
    if amount == 0:
        return image
    return image + amount * (image - gaussian_blur(image, sigma_px))


def _per_image(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each image of (B, H, W) or (H, W), shaped to broadcast."""
    flat = image.reshape(-1, image.shape[-2] * image.shape[-1]) if image.ndim == 3 else image.reshape(1, -1)
    lo, hi = flat.amin(-1), flat.amax(-1)
    shape = (-1, 1, 1) if image.ndim == 3 else ()
    return lo.reshape(shape), hi.reshape(shape)


def invert(image: torch.Tensor) -> torch.Tensor:
    """min + max - image per image: the order of the values reversed, their range kept."""
    lo, hi = _per_image(_images(image))
    return lo + hi - image


def quantize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each image onto 2^bits equally spaced levels over its own [min, max] (a constant image is kept)."""
    image = _images(image)
    bits = check_number("bits", bits, *BITS_RANGE, integer=True)
    steps = 2 ** bits - 1
    lo, hi = _per_image(image)
    span = (hi - lo).clamp_min(torch.finfo(image.dtype).tiny)
    return lo + torch.round((image - lo) / span * steps) / steps * span


# ---------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class Processing:
    """The stored image's processing (see the module docstring); the defaults store -log(I/I0) as it is.

    Args:
        log: store -log(I/I0) (True) or I/I0 (False).
        window: (low, high) percentiles (0..100) mapped onto [0, 1], or None for no windowing.
        gamma: display gamma on the windowed values (needs ``window`` unless 1), in `GAMMA_RANGE`.
        unsharp_amount: edge-enhancement gain, 0..`MAX_UNSHARP_AMOUNT` (0: none).
        unsharp_sigma_mm: its Gaussian's sigma, mm on the detector (> 0 when ``unsharp_amount`` > 0).
        invert: reverse the polarity.
        bits: quantise to this many bits (1..16) or None.
    """

    log: bool = True
    window: tuple[float, float] | None = None
    gamma: float = 1.0
    unsharp_amount: float = 0.0
    unsharp_sigma_mm: float = 0.0
    invert: bool = False
    bits: int | None = None

    def __post_init__(self) -> None:
        for name in ("log", "invert"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"processing {name} must be True or False, got {getattr(self, name)!r}")
        if self.window is not None:
            if len(self.window) != 2:
                raise InputError(f"window must be (low, high) percentiles, got {self.window!r}")
            low = check_number("window low percentile", self.window[0], 0.0, 100.0)
            high = check_number("window high percentile", self.window[1], 0.0, 100.0)
            if not low < high:
                raise InputError(f"the window's low percentile ({low:g}) must be below its high one ({high:g})")
            object.__setattr__(self, "window", (low, high))
        object.__setattr__(self, "gamma", check_number("gamma", self.gamma, *GAMMA_RANGE))
        if self.gamma != 1.0 and self.window is None:
            raise InputError("gamma acts on windowed values in [0, 1]: give window=(low, high) percentiles too")
        object.__setattr__(self, "unsharp_amount", check_number("unsharp_amount", self.unsharp_amount, 0.0,
                                                                MAX_UNSHARP_AMOUNT))
        object.__setattr__(self, "unsharp_sigma_mm", check_number("unsharp_sigma_mm", self.unsharp_sigma_mm, 0.0,
                                                                  1e5, unit="mm"))
        if self.unsharp_amount > 0 and self.unsharp_sigma_mm == 0:
            raise InputError("unsharp masking needs unsharp_sigma_mm > 0 (the blur it subtracts, mm on the detector)")
        if self.bits is not None:
            object.__setattr__(self, "bits", check_number("bits", self.bits, *BITS_RANGE, integer=True))

    @property
    def convention(self) -> str:
        """The stored image's intensity convention (`CONVENTIONS`)."""
        return convention_of(self.log, self.invert)


def convention_of(log: bool, inverted: bool) -> str:
    """``"line_integral"``, ``"inverted"``, ``"intensity"`` or ``"inverted_intensity"``."""
    return ("inverted" if inverted else "line_integral") if log else ("inverted_intensity" if inverted else "intensity")


def process(intensity: torch.Tensor, detector: Detector, processing: Processing | None = None,
            floor: float = INTENSITY_FLOOR) -> torch.Tensor:
    """Stored image (B, H, W) from the detected I/I0 (B, H, W); same dtype. None: -log(I/I0) as it is.

    ``floor``: I/I0 is clamped to it before the logarithm (half a photon's worth for a noisy image).
    """
    processing = Processing() if processing is None else processing
    if not isinstance(processing, Processing):
        raise InputError(f"processing must be a Processing or None, got {type(processing).__name__}")
    intensity = _images(intensity, "intensity")
    if intensity.ndim != 3 or tuple(intensity.shape[1:]) != detector.shape:
        raise InputError(f"intensity must be (B, {detector.rows}, {detector.cols}), got {tuple(intensity.shape)}")
    floor = check_number("floor", floor, 0.0, 1.0, low_open=True)
    v = -torch.log(intensity.clamp_min(floor)) if processing.log else intensity
    if processing.window is not None:
        v = torch.stack([window_level(img, *percentile_window(img, *processing.window)) for img in v])
    if processing.gamma != 1.0:
        v = apply_gamma(v, processing.gamma)
    if processing.unsharp_amount:
        dv, du = float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])
        sigma = (processing.unsharp_sigma_mm / dv, processing.unsharp_sigma_mm / du)
        if max(sigma) > MAX_BLUR_PX:
            raise InputError(f"unsharp_sigma_mm = {processing.unsharp_sigma_mm:g} mm is more than {MAX_BLUR_PX:g} "
                             f"pixels of this detector; use at most {MAX_BLUR_PX * min(dv, du):g} mm")
        v = unsharp_mask(v, sigma, processing.unsharp_amount)
        if processing.window is not None:  # the display range: overshoot at edges saturates
            v = v.clamp(0, 1)
    if processing.invert:
        v = invert(v)
    if processing.bits is not None:
        v = quantize(v, processing.bits)
    return v


# ---------------------------------------------------------------------------- collimation


@dataclass(frozen=True)
class Collimation:
    """A collimated field: inside it the beam is open, outside it ``transmission`` of it passes.

    Args:
        shape: ``"rectangle"`` (blades) or ``"circle"`` (an iris).
        size: rectangle: (height, width) of the field as fractions (0, 1] of
            the detector's rows and columns; circle: (diameter, ignored) as a
            fraction of the shorter detector side.
        transmission: fraction of the beam the blades pass, in (0, 1) (lead
            shutters: ~1e-3-1e-2).
        center: (column, row) offset of the field's centre from the principal
            point, as fractions of the detector's width and height.
    """

    shape: str = "rectangle"
    size: tuple[float, float] = (0.7, 0.8)
    transmission: float = 0.01
    center: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.shape not in COLLIMATION_SHAPES:
            raise InputError(f"unknown collimation shape {self.shape!r}; choose one of {', '.join(COLLIMATION_SHAPES)}")
        if len(self.size) != 2 or len(self.center) != 2:
            raise InputError("collimation size and center are pairs of fractions (rows/diameter, columns)")
        object.__setattr__(self, "size", tuple(check_number("collimation size", s, 0.0, 1.0, low_open=True)
                                               for s in self.size))
        object.__setattr__(self, "center", tuple(check_number("collimation center", c, -0.5, 0.5)
                                                 for c in self.center))
        t = check_number("collimation transmission", self.transmission, 0.0, 1.0, low_open=True)
        if t >= 1:
            raise InputError("collimation transmission must be below 1 (1 means no collimator)")
        object.__setattr__(self, "transmission", t)


def collimation_mask(detector: Detector, collimation: Collimation) -> torch.Tensor:
    """(H, W) bool: True at the pixels whose centre lies inside the open field.

    Rectangle: |r - r_c| <= size_rows H / 2 and |c - c_c| <= size_cols W / 2
    (pixel units, centre at the principal point plus the offset); circle:
    distance in mm from the centre <= diameter * min(H dv, W du) / 2.
    """
    if not isinstance(collimation, Collimation):
        raise InputError(f"collimation must be a Collimation, got {type(collimation).__name__}")
    _, du, dv, cx, cy = (float(v) for v in detector.tensors())
    h, w = detector.rows, detector.cols
    rc, cc = cy + collimation.center[1] * h, cx + collimation.center[0] * w
    rows = torch.arange(h, dtype=torch.float64)[:, None] - rc
    cols = torch.arange(w, dtype=torch.float64)[None, :] - cc
    if collimation.shape == "rectangle":
        eps = 1e-9
        return (rows.abs() <= collimation.size[0] * h / 2 + eps) & (cols.abs() <= collimation.size[1] * w / 2 + eps)
    radius = collimation.size[0] * min(h * dv, w * du) / 2
    return (rows * dv) ** 2 + (cols * du) ** 2 <= radius ** 2 + 1e-9


def collimation_area_mm2(detector: Detector, collimation: Collimation) -> float:
    """The open field's area on the detector plane (mm^2): rectangle size_r H dv x size_c W du, circle pi r^2."""
    _, du, dv, _, _ = (float(v) for v in detector.tensors())
    if collimation.shape == "rectangle":
        return collimation.size[0] * detector.rows * dv * collimation.size[1] * detector.cols * du
    return math.pi * (collimation.size[0] * min(detector.rows * dv, detector.cols * du) / 2) ** 2
