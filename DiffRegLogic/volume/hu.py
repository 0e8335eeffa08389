"""Hounsfield units to linear attenuation and back: `HUToMu` and its inverse `hu_from_mu`.

torch is imported where it is used, so that the command line tool can show
the defaults of `HUToMu` in its help without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..limits import check_number


MAX_MU_PER_MM = 10.0
"""Largest attenuation coefficient accepted for water or bone, 1/mm (lead at 60 keV: ~6/mm)."""
MAX_HU = 100_000.0
"""Largest |HU| accepted for a calibration point or threshold (metal in a CT reaches ~30 000 HU)."""


@dataclass(frozen=True)
class HUToMu:
    """Piecewise-linear map from Hounsfield units to linear attenuation mu (1/mm).

    Through three points: air (-1000 HU -> 0), water (0 HU -> ``mu_water``) and
    bone (``bone_hu`` -> ``mu_bone``), extended linearly beyond bone; values
    below air are clamped to 0 (no negative attenuation). The defaults are the
    plain HU definition (mu = mu_water (1 + HU/1000)) with mu_water at an
    effective energy of about 60 keV; raise ``mu_bone`` to mimic the stronger
    bone contrast of lower-energy beams.
    """

    mu_water: float = 0.0206
    bone_hu: float = 1000.0
    mu_bone: float | None = None  # default: 2 * mu_water (the HU definition)

    def __post_init__(self) -> None:
        for name in ("mu_water", "bone_hu") + (("mu_bone",) if self.mu_bone is not None else ()):
            check_number(name, getattr(self, name))  # a finite number (not a string, NaN or infinity)
        if not (self.mu_water > 0):
            raise InputError(f"mu_water must be positive (1/mm), got {self.mu_water}")
        if not (self.bone_hu > 0):
            raise InputError(f"bone_hu must be above water (0 HU), got {self.bone_hu}")
        if self.mu_bone is not None and not (self.mu_bone > self.mu_water):
            raise InputError(f"mu_bone ({self.mu_bone}) must exceed mu_water ({self.mu_water})")
        # far beyond any diagnostic energy (water: 0.02/mm at 60 keV, 0.5/mm at 10 keV), and within float32 after HU
        check_number("mu_water", self.mu_water, 0.0, MAX_MU_PER_MM, low_open=True, unit="1/mm")
        check_number("bone_hu", self.bone_hu, 0.0, MAX_HU, low_open=True, unit="HU")
        if self.mu_bone is not None:
            check_number("mu_bone", self.mu_bone, 0.0, MAX_MU_PER_MM, low_open=True, unit="1/mm")

    def __call__(self, hu):
        """mu (1/mm) of HU, a tensor of any shape."""
        import torch

        mu_bone = 2 * self.mu_water if self.mu_bone is None else self.mu_bone
        soft = self.mu_water * (1 + hu / 1000.0)
        bone = self.mu_water + (mu_bone - self.mu_water) * hu / self.bone_hu
        return torch.where(hu <= 0, soft, bone).clamp_min(0)


def hu_from_mu(mu, hu_to_mu: HUToMu | None = None):
    """Invert `HUToMu` (the map a `Volume` was built with): mu (1/mm) -> HU; mu = 0 -> -1000 HU."""
    import torch

    conv = hu_to_mu or HUToMu()
    mu_bone = 2 * conv.mu_water if conv.mu_bone is None else conv.mu_bone
    soft = 1000.0 * (mu / conv.mu_water - 1)
    bone = conv.bone_hu * (mu - conv.mu_water) / (mu_bone - conv.mu_water)
    return torch.where(mu <= conv.mu_water, soft, bone)
