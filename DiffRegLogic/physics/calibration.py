"""How HU become materials and densities: `MaterialThresholds` and `DensityCalibration`.

torch is imported where it is used, so that the command line tool can show
these defaults in its help without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

BASE_MATERIALS = ("air", "soft_tissue", "bone")


@dataclass(frozen=True)
class DensityCalibration:
    """Piecewise-linear HU -> mass density (g/cm^3) through ``knots`` ((HU, rho), ...), extrapolated linearly.

    Densities are clamped at 0 below the first knot's extrapolation.
    """

    knots: tuple[tuple[float, float], ...] = ((-1000.0, 0.0012), (0.0, 1.0), (1000.0, 1.6))

    def __post_init__(self) -> None:
        hu = [k[0] for k in self.knots]
        if len(self.knots) < 2 or any(len(k) != 2 for k in self.knots):
            raise InputError("a density calibration needs at least two (HU, g/cm^3) knots")
        if any(b <= a for a, b in zip(hu, hu[1:])):
            raise InputError(f"calibration knots must have increasing HU, got {hu}")
        if any(k[1] < 0 for k in self.knots):
            raise InputError("calibration densities must be >= 0 g/cm^3")

    def __call__(self, hu):
        """Density (g/cm^3) of HU, a tensor of any shape."""
        import torch

        x = torch.tensor([k[0] for k in self.knots], dtype=hu.dtype, device=hu.device)
        y = torch.tensor([k[1] for k in self.knots], dtype=hu.dtype, device=hu.device)
        seg = (torch.searchsorted(x, hu.contiguous()) - 1).clamp(0, len(x) - 2)
        slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
        return (y[seg] + slope[seg] * (hu - x[seg])).clamp_min(0)


@dataclass(frozen=True)
class MaterialThresholds:
    """HU thresholds between air, soft tissue and bone; ``soft_width_hu`` > 0 makes the steps smooth."""

    air_max_hu: float = -800.0
    bone_min_hu: float = 350.0
    soft_width_hu: float = 0.0

    def __post_init__(self) -> None:
        from ..limits import check_number
        from ..volume.hu import MAX_HU

        check_number("air_max_hu", self.air_max_hu, -MAX_HU, MAX_HU, unit="HU")
        check_number("bone_min_hu", self.bone_min_hu, -MAX_HU, MAX_HU, unit="HU")
        check_number("soft_width_hu", self.soft_width_hu, 0.0, MAX_HU, unit="HU")
        if not self.air_max_hu < self.bone_min_hu:
            raise InputError(f"air_max_hu ({self.air_max_hu}) must be below bone_min_hu ({self.bone_min_hu})")
        if not (self.soft_width_hu >= 0):
            raise InputError(f"soft_width_hu must be >= 0, got {self.soft_width_hu}")

    def weights(self, hu):
        """(3, ...) weights of air, soft tissue and bone, summing to 1, for HU (...)."""
        import torch

        if self.soft_width_hu > 0:
            air = torch.sigmoid((self.air_max_hu - hu) / self.soft_width_hu)
            bone = torch.sigmoid((hu - self.bone_min_hu) / self.soft_width_hu)
        else:
            air = (hu <= self.air_max_hu).to(hu.dtype)
            bone = (hu > self.bone_min_hu).to(hu.dtype)
        soft = (1 - air - bone).clamp_min(0)
        return torch.stack([air, soft, bone]) / (air + soft + bone)
