"""X-ray tube spectra (tungsten anode, spekpy, shipped as ``physics/data/tube_spectra.json``) and filtration.

``tube_spectra.json``: tungsten-anode spectra from spekpy for 60-120 kVp
(10 kVp apart), 12 deg anode, 2.5 mm Al, 1 keV bins. Energies in keV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from .tables import _table, mass_attenuation, nominal_density


@dataclass(frozen=True)
class Spectrum:
    """A photon spectrum: bin energies (keV) and the fraction of photons in each bin (sums to 1).

    Stored as tuples so a spectrum is immutable and hashable.
    """

    energies_kev: tuple[float, ...]
    fluence: tuple[float, ...]
    name: str = ""

    def __post_init__(self) -> None:
        e = torch.tensor(self.energies_kev, dtype=torch.float64)
        f = torch.tensor(self.fluence, dtype=torch.float64)
        if e.ndim != 1 or e.numel() == 0 or e.shape != f.shape:
            raise InputError(f"a spectrum needs as many fluence values as energies, got {e.numel()} and {f.numel()}")
        if not torch.isfinite(f).all() or (f < 0).any() or float(f.sum()) <= 0:
            raise InputError("spectrum fluence must be finite, non-negative and not all zero")
        if (e < 1.0).any() or (e > 150.0).any():
            raise InputError("spectrum energies must lie within 1-150 keV (the attenuation tables' range)")
        total = float(f.sum())
        object.__setattr__(self, "fluence", tuple(float(v) / total for v in self.fluence))

    @property
    def mean_energy_kev(self) -> float:
        """Photon-fluence-weighted mean energy (keV)."""
        return sum(e * f for e, f in zip(self.energies_kev, self.fluence))

    def tensors(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies (E,), fluence (E,))."""
        return (torch.tensor(self.energies_kev, dtype=dtype, device=device),
                torch.tensor(self.fluence, dtype=dtype, device=device))

    def filtered(self, material: str, thickness_mm: float) -> "Spectrum":
        """This spectrum after ``thickness_mm`` of ``material`` at its nominal density (renormalised)."""
        if not (thickness_mm >= 0):
            raise InputError(f"filter thickness must be >= 0 mm, got {thickness_mm}")
        e, f = self.tensors()
        mu = mass_attenuation(material, e) * nominal_density(material) * thickness_mm / 10.0
        out = f * torch.exp(-mu)
        return Spectrum(self.energies_kev, tuple(out.tolist()), f"{self.name} + {thickness_mm:g} mm {material}")

    def rebinned(self, n_bins: int) -> "Spectrum":
        """``n_bins`` groups of consecutive bins of equal energy width, each at its fluence-weighted mean energy."""
        e, f = self.tensors()
        if not (isinstance(n_bins, int) and 1 <= n_bins <= e.numel()):
            raise InputError(f"n_bins must be an integer in 1..{e.numel()}, got {n_bins}")
        edges = torch.linspace(float(e[0]), float(e[-1]) + 1e-9, n_bins + 1, dtype=torch.float64)
        group = (torch.bucketize(e, edges, right=True) - 1).clamp(0, n_bins - 1)
        fg = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, group, f)
        eg = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, group, f * e)
        keep = fg > 0
        return Spectrum(tuple((eg[keep] / fg[keep]).tolist()), tuple(fg[keep].tolist()), f"{self.name} ({n_bins} bins)")


def tube_kvps() -> tuple[int, ...]:
    """Tube voltages (kVp) with a shipped spectrum."""
    return tuple(int(k) for k in _table("tube_spectra.json")["fluence"])


def tube_spectrum(kvp: float = 80, extra_filtration_mm_al: float = 0.0, min_fraction: float = 1e-6,
                  n_bins: int | None = None) -> Spectrum:
    """Tungsten-anode spectrum at ``kvp`` (a shipped value: 60, 70, ..., 120) with 2.5 mm Al.

    Args:
        kvp: tube voltage (kVp).
        extra_filtration_mm_al: aluminium added to the shipped 2.5 mm (mm).
        min_fraction: bins carrying less than this fraction of the photons are dropped.
        n_bins: regroup into this many energy bins (default: 1 keV bins).
    """
    table = _table("tube_spectra.json")
    from ..limits import check_number

    kvp = check_number("kvp", kvp, unit="kVp")
    check_number("extra_filtration_mm_al", extra_filtration_mm_al, 0.0, 100.0, unit="mm")
    if n_bins is not None:
        n_bins = check_number("n_bins (energy bins)", n_bins, 1, 1000, integer=True)
    key = str(int(round(kvp))) if math.isfinite(kvp) else ""
    if key not in table["fluence"] or abs(kvp - round(kvp)) > 1e-9:
        raise InputError(f"no tube spectrum for {kvp} kVp; shipped: {', '.join(table['fluence'])} kVp")
    fluence = torch.tensor(table["fluence"][key], dtype=torch.float64)
    keep = fluence >= min_fraction * float(fluence.sum())
    energies = torch.tensor(table["energies_keV"], dtype=torch.float64)[keep]
    spectrum = Spectrum(tuple(energies.tolist()), tuple(fluence[keep].tolist()), f"{key} kVp W, 2.5 mm Al")
    if extra_filtration_mm_al:
        spectrum = spectrum.filtered("aluminium", extra_filtration_mm_al)
    return spectrum.rebinned(n_bins) if n_bins else spectrum


def monochromatic(energy_kev: float) -> Spectrum:
    """A delta spectrum at ``energy_kev``."""
    return Spectrum((float(energy_kev),), (1.0,), f"{energy_kev:g} keV")
