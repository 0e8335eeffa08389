"""X-ray realism on top of a DRR: heel effect, scatter, quantum noise and detector blur, all seeded.

`apply_realism` takes the primary intensity I/I0 (B, H, W) (1 where nothing
attenuates) and applies, in this order, as the physics happens:

1. **heel effect**: the tube's output falls off towards the anode side; a
   linear gain across the detector columns, ``1 + heel * (u - cx) / half_width``
   (``heel`` = relative change at the edge; positive: brighter at high
   columns). A first-order stand-in for the anode's self-absorption;
2. **scatter**: ``scatter_fraction`` times the primary convolved with a broad
   Gaussian of ``scatter_sigma_mm`` (mm on the detector), added to the
   primary (a single-kernel scatter-superposition model: a uniform field gets
   a scatter-to-primary ratio of exactly ``scatter_fraction``);
3. **quantum noise**: with ``photons_per_pixel`` = N0 photons reaching a
   pixel when nothing attenuates, the count is Poisson(N0 I) and the noisy
   intensity count / N0. For an energy-integrating detector this keeps the
   photon-count statistics and neglects the spread of photon energies (the
   Swank factor);
4. **detector blur**: a Gaussian point-spread function of ``blur_mm``
   (sigma, mm on the detector), applied after the noise as light spreads in
   the scintillator after the photons were absorbed.

Randomness comes only from a `torch.Generator` seeded with ``seed``: the same
seed gives the same image. `DiffRegLogic.drr.radiograph.simulate_radiograph`
renders and applies it in one call and returns -log(I/I0) or I/I0.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..filters import gaussian_blur
from ..geometry.detector import Detector
from ..limits import MAX_BLUR_PX, PHOTONS_RANGE, PIXEL_SPACING_RANGE_MM, SEED_RANGE, check_number


MAX_SCATTER_FRACTION = 100.0
"""Largest scatter-to-primary ratio (a thick patient without a grid reaches ~10)."""
MAX_SCATTER_SIGMA_MM = 10_000.0
"""Largest scatter kernel sigma, mm on the detector (the whole panel is ~430 mm)."""


@dataclass(frozen=True)
class Realism:
    """Realism options (see the module docstring); the defaults change nothing.

    Checked on construction (`InputError` naming the field): photons_per_pixel
    None or in `PHOTONS_RANGE`; blur_mm and scatter_sigma_mm finite and >= 0
    (each at most `MAX_BLUR_PX` pixels of the detector it is applied on, see
    `check_detector`); scatter_fraction in [0, `MAX_SCATTER_FRACTION`]; heel
    in (-1, 1); seed a whole number in `SEED_RANGE`.
    """

    photons_per_pixel: float | None = None
    blur_mm: float = 0.0
    scatter_fraction: float = 0.0
    scatter_sigma_mm: float = 40.0
    heel: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.photons_per_pixel is not None:
            self._set("photons_per_pixel", PHOTONS_RANGE, "photons reaching an unattenuated pixel (1e4 is a typical "
                      "fluoroscopy dose; None for no noise)")
        self._set("blur_mm", (0.0, MAX_BLUR_PX * PIXEL_SPACING_RANGE_MM[1]), "the detector blur's Gaussian sigma in "
                  "mm (0 for none)", unit="mm")
        self._set("scatter_fraction", (0.0, MAX_SCATTER_FRACTION), "the scatter-to-primary ratio (0 for no scatter)")
        self._set("scatter_sigma_mm", (0.0, MAX_SCATTER_SIGMA_MM), "the scatter kernel's Gaussian sigma in mm", unit="mm")
        heel = self._set("heel", (-1.0, 1.0), "the relative fluence change at the detector edge, in (-1, 1)")
        if abs(heel) >= 1:
            raise InputError(f"heel must lie strictly between -1 and 1 (relative fluence change at the detector "
                             f"edge), got {heel}; 0 means no heel effect")
        self._set("seed", SEED_RANGE, "the seed of the noise", integer=True)

    def _set(self, name: str, limits: tuple[float, float], meaning: str, *, unit: str = "",
             integer: bool = False) -> float | int:
        """Check field ``name`` against ``limits``, store it as a plain float/int and return it."""
        value = getattr(self, name)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) > 2**1023:
            raise InputError(f"{name} must be in [{limits[0]:g}, {limits[1]:g}], got an integer of about "
                             f"{int(abs(int(value)).bit_length() * 0.30103) + 1} digits; it is {meaning}")
        try:
            number = check_number(name, value, *limits, integer=integer, unit=unit)
        except InputError as exc:
            raise InputError(f"{exc}; it is {meaning}") from None
        object.__setattr__(self, name, number)
        return number

    @property
    def is_identity(self) -> bool:
        return (self.photons_per_pixel is None and self.blur_mm == 0 and self.scatter_fraction == 0
                and self.heel == 0)

    def check_detector(self, detector: Detector) -> None:
        """InputError unless the blur and scatter kernels span at most `MAX_BLUR_PX` pixels (sigma) of ``detector``."""
        if not isinstance(detector, Detector):
            raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
        finest = min(float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1]))  # mm
        kernels = [("blur_mm", self.blur_mm)]
        if self.scatter_fraction:
            kernels.append(("scatter_sigma_mm", self.scatter_sigma_mm))
        for name, sigma_mm in kernels:
            if sigma_mm / finest > MAX_BLUR_PX:
                raise InputError(
                    f"{name} = {sigma_mm:g} mm is {sigma_mm / finest:.3g} pixels of {finest:g} mm on this detector, "
                    f"more than the {MAX_BLUR_PX:g} pixels a Gaussian kernel may span; use at most "
                    f"{MAX_BLUR_PX * finest:g} mm (the kernel's sigma is in mm on the detector, not pixels)")


def gaussian_filter(image: torch.Tensor, sigma_rows: float, sigma_cols: float) -> torch.Tensor:
    """Gaussian blur of (B, H, W) with sigmas in pixels along rows and columns, edges replicated.

    The shared `DiffRegLogic.filters.gaussian_blur`: sampled, normalised
    kernel cut at 4 sigma (FFT for the broad scatter kernel), so a constant
    image stays constant. Same shape and dtype out.
    """
    return gaussian_blur(image, (sigma_rows, sigma_cols))


def heel_gain(detector: Detector, heel: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """(W,) fluence gain across the detector columns: 1 at the principal point, 1 +- heel at the edges."""
    cols = torch.arange(detector.cols, dtype=dtype, device=device)
    cx = (detector.cols - 1) / 2.0 if detector.principal_point is None else float(detector.principal_point[0])
    half = max((detector.cols - 1) / 2.0, 1.0)
    return (1 + heel * (cols - cx) / half).clamp_min(0)


def apply_realism(intensity: torch.Tensor, detector: Detector, realism: Realism) -> torch.Tensor:
    """Primary intensity I/I0 (B, H, W) -> realistic intensity (B, H, W) (same dtype; not differentiable w.r.t. noise)."""
    if not isinstance(realism, Realism):
        raise InputError(f"realism must be a Realism, got {type(realism).__name__}")
    realism.check_detector(detector)
    if not isinstance(intensity, torch.Tensor) or not intensity.is_floating_point():
        raise InputError(f"intensity must be a floating-point tensor (B, {detector.rows}, {detector.cols}), "
                         f"got {type(intensity).__name__}")
    if intensity.ndim != 3 or tuple(intensity.shape[1:]) != detector.shape:
        raise InputError(f"intensity must be (B, {detector.rows}, {detector.cols}), got {tuple(intensity.shape)}")
    dv, du = float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])  # (row, column) spacing, mm
    out = intensity
    if realism.heel:
        out = out * heel_gain(detector, realism.heel, out.dtype, out.device)
    if realism.scatter_fraction:
        out = out + realism.scatter_fraction * gaussian_filter(out, realism.scatter_sigma_mm / dv,
                                                               realism.scatter_sigma_mm / du)
    if realism.photons_per_pixel is not None:
        generator = torch.Generator(device=out.device).manual_seed(int(realism.seed))
        rate = (out.detach().to(torch.float64) * realism.photons_per_pixel).clamp_min(0)
        out = (torch.poisson(rate, generator=generator) / realism.photons_per_pixel).to(intensity.dtype)
    if realism.blur_mm:
        out = gaussian_filter(out, realism.blur_mm / dv, realism.blur_mm / du)
    return out


def intensity_to_line_integral(intensity: torch.Tensor, realism: Realism | None = None) -> torch.Tensor:
    """-log(I/I0), with I floored at half a photon when there is noise (a pixel may count 0), else at 1e-12."""
    floor = 0.5 / realism.photons_per_pixel if realism is not None and realism.photons_per_pixel else 1e-12
    return -torch.log(intensity.clamp_min(floor))
