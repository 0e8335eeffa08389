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

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..filters import gaussian_blur
from ..geometry.detector import Detector


@dataclass(frozen=True)
class Realism:
    """Realism options (see the module docstring); the defaults change nothing."""

    photons_per_pixel: float | None = None
    blur_mm: float = 0.0
    scatter_fraction: float = 0.0
    scatter_sigma_mm: float = 40.0
    heel: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.photons_per_pixel is not None and not (self.photons_per_pixel > 0 and math.isfinite(self.photons_per_pixel)):
            raise InputError(f"photons_per_pixel must be a positive number (or None for no noise), got {self.photons_per_pixel}")
        for name in ("blur_mm", "scatter_fraction", "scatter_sigma_mm"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{name} must be >= 0, got {value}")
        if not (-1 < self.heel < 1):
            raise InputError(f"heel must lie in (-1, 1) (relative fluence change at the detector edge), got {self.heel}")

    @property
    def is_identity(self) -> bool:
        return (self.photons_per_pixel is None and self.blur_mm == 0 and self.scatter_fraction == 0
                and self.heel == 0)


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
