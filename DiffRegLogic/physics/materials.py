"""A CT as materials: per-material density volumes for the polychromatic renderer.

From Hounsfield units, each voxel gets

* a **mass density** rho (g/cm^3) from a piecewise-linear calibration
  (`DensityCalibration`; default knots: -1000 HU -> 0.0012 (air),
  0 HU -> 1.0 (water), 1000 HU -> 1.6, extended linearly beyond the last
  knot: a bilinear calibration of the usual shape, flatter above water where
  calcium raises HU faster than density; measure your scanner's with a
  density phantom and pass its knots);
* **material weights** w_m (sum 1): ``air`` at or below ``air_max_hu``
  (-800), ``bone`` above ``bone_min_hu`` (350), ``soft_tissue`` in between
  (`MaterialThresholds`). With ``soft_width_hu`` > 0 the steps become
  logistic ramps of that width, so the weights are smooth functions of HU;
* optionally, **implants** from a label map: voxels carrying a label listed
  in ``implants`` (e.g. ``{1: "titanium"}``) become that material at its
  nominal density (metal saturates CT numbers, so its HU are not used).

Channel m of `MaterialVolume.densities` holds rho(x) w_m(x), so the line
integral of channel m is the mass path of material m (g/cm^2 once mm are
turned into cm). `MaterialVolume` is a `Volume` whose ``mu`` is the
monochromatic stand-in at the beam's mean energy: everything that takes a
volume (registration, pyramids, the MRML bridge) takes a `MaterialVolume`,
and `DiffRegLogic.drr.render` renders it with the polychromatic model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..volume.ct import Volume
from ..volume.hu import HUToMu, hu_from_mu
from .beam import Beam
from .calibration import BASE_MATERIALS, DensityCalibration, MaterialThresholds
from .spectra import tube_spectrum
from .tables import material_names, nominal_density


def material_densities(hu, thresholds: MaterialThresholds | None = None,
                       calibration: DensityCalibration | None = None, labels=None,
                       implants: dict[int, str] | None = None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Per-material densities (M, K, J, I) in g/cm^3 and the material names, from HU (K, J, I).

    Args:
        hu: Hounsfield units (K, J, I).
        thresholds: air / soft tissue / bone split (default -800 / 350 HU, hard).
        calibration: HU -> density (default `DensityCalibration()`).
        labels: integer label map (K, J, I) on the CT grid, needed with ``implants``.
        implants: {label: material} for voxels to assign to a material at its
            nominal density (e.g. {1: "titanium"}); they leave the base materials.
    """
    hu = torch.as_tensor(hu)
    if hu.ndim != 3:
        raise InputError(f"a CT volume must be 3D (K, J, I), got an array of shape {tuple(hu.shape)}")
    hu = hu.to(torch.float64) if not hu.is_floating_point() else hu
    if not torch.isfinite(hu).all():
        bad = int((~torch.isfinite(hu)).sum())
        raise InputError(f"CT contains {bad} NaN or infinite voxels; fill or mask them before rendering")
    rho = (calibration or DensityCalibration())(hu)
    channels = list(rho * (thresholds or MaterialThresholds()).weights(hu))
    names = list(BASE_MATERIALS)
    if implants:
        if labels is None:
            raise InputError("implants need a label map (labels=...) on the CT grid")
        labels = torch.as_tensor(labels, device=hu.device)
        if tuple(labels.shape) != tuple(hu.shape):
            raise InputError(f"label map shape {tuple(labels.shape)} differs from the CT's {tuple(hu.shape)}")
        known = material_names()
        for label, material in implants.items():
            if material not in known:
                raise InputError(f"unknown implant material {material!r}; known: {', '.join(known)}")
            inside = labels == int(label)
            if not inside.any():
                raise InputError(f"no voxel carries implant label {label}")
            channels = [c * ~inside for c in channels]
            if material in names:
                i = names.index(material)
                channels[i] = channels[i] + inside * nominal_density(material)
            else:
                names.append(material)
                channels.append(inside.to(hu.dtype) * nominal_density(material))
    return torch.stack(channels), tuple(names)


@dataclass(frozen=True)
class MaterialVolume(Volume):
    """A CT as material densities plus the beam that sees it (see the module docstring).

    Attributes (beyond `Volume`'s):
        densities: (M, K, J, I) g/cm^3, channel m = density of material m
            (contiguous: each channel is traced on its own).
        materials: the M material names (keys of the attenuation table).
        beam: spectrum, detector response and output of the polychromatic model.
    ``mu`` (K, J, I) is sum_m mu_m(E_mean) densities_m / 10 (1/mm), the
    monochromatic stand-in at the spectrum's mean energy.
    """

    densities: torch.Tensor | None = field(default=None)
    materials: tuple[str, ...] = ()
    beam: Beam | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.densities
        if not isinstance(d, torch.Tensor) or d.ndim != 4 or tuple(d.shape[1:]) != tuple(self.mu.shape):
            raise InputError(f"densities must be (M, K, J, I) with (K, J, I) = {tuple(self.mu.shape)}")
        if len(self.materials) != d.shape[0]:
            raise InputError(f"{d.shape[0]} density channels but {len(self.materials)} material names")
        if not isinstance(self.beam, Beam):
            raise InputError("a MaterialVolume needs a Beam (spectrum, detector response, output)")
        known = material_names()
        for m in self.materials:
            if m not in known:
                raise InputError(f"unknown material {m!r}; known: {', '.join(known)}")
        if not torch.isfinite(d).all() or (d < 0).any():
            raise InputError("material densities must be finite and >= 0 g/cm^3")

    @classmethod
    def from_hu(cls, hu, affine, beam: Beam | None = None, thresholds: MaterialThresholds | None = None,
                calibration: DensityCalibration | None = None, labels=None, implants: dict[int, str] | None = None,
                dtype: torch.dtype = torch.float32) -> "MaterialVolume":
        """Materials from HU (K, J, I) and an ijk->RAS affine (default beam: 80 kVp, energy integrating)."""
        densities, names = material_densities(hu, thresholds, calibration, labels, implants)
        labels = None if labels is None else torch.as_tensor(labels)
        return cls.from_densities(densities.to(dtype), names, affine, beam, labels)

    @classmethod
    def from_volume(cls, volume: Volume, beam: Beam | None = None, hu_to_mu: HUToMu | None = None,
                    **options) -> "MaterialVolume":
        """Materials from a monochromatic `Volume`, inverting the `HUToMu` it was built with."""
        hu = hu_from_mu(volume.mu.detach().to(torch.float64), hu_to_mu)
        return cls.from_hu(hu, volume.affine, beam, labels=volume.labels, dtype=volume.mu.dtype, **options)

    @classmethod
    def from_densities(cls, densities: torch.Tensor, materials: tuple[str, ...], affine, beam: Beam | None = None,
                       labels=None) -> "MaterialVolume":
        """From density channels (M, K, J, I) g/cm^3 directly."""
        beam = beam or Beam(tube_spectrum(80))
        densities = torch.as_tensor(densities)
        if densities.ndim != 4:
            raise InputError(f"densities must be (M, K, J, I), got shape {tuple(densities.shape)}")
        if densities.shape[0] != len(materials):
            raise InputError(f"{densities.shape[0]} density channels but {len(materials)} material names")
        mu_rho = beam.effective_mu_per_density(tuple(materials)).to(densities.dtype).to(densities.device)
        mu = torch.einsum("m,mkji->kji", mu_rho, densities) / 10.0
        return cls(mu, torch.as_tensor(affine, dtype=torch.float64), labels, densities.contiguous(), tuple(materials), beam)

    def with_beam(self, beam: Beam) -> "MaterialVolume":
        """The same materials seen by another beam."""
        return MaterialVolume.from_densities(self.densities, self.materials, self.affine, beam, self.labels)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "MaterialVolume":
        labels = None if self.labels is None else self.labels.to(device)
        return MaterialVolume(self.mu.to(device=device, dtype=dtype), self.affine.to(device), labels,
                              self.densities.to(device=device, dtype=dtype).contiguous(), self.materials, self.beam)

    def masked(self, keep_labels) -> "MaterialVolume":
        """Densities (and mu) set to 0 outside the voxels whose label is in ``keep_labels``."""
        base = super().masked(keep_labels)  # checks the labels
        keep = torch.isin(self.labels, torch.as_tensor(list(keep_labels), device=self.labels.device))
        return MaterialVolume(base.mu, self.affine, self.labels, self.densities * keep, self.materials,
                              self.beam)

    def downsample(self, factor) -> "MaterialVolume":
        base = super().downsample(factor)
        densities = torch.nn.functional.adaptive_avg_pool3d(self.densities[None], tuple(base.mu.shape))[0]
        return MaterialVolume(base.mu, base.affine, base.labels, densities.contiguous(), self.materials, self.beam)
