"""X-ray physics tables: mass attenuation of materials and tube spectra, and the detector's response.

The numbers come from files shipped in ``DiffRegLogic/data`` with their
provenance (``tools/make_physics_tables.py`` made them once; the engine never
imports the packages they came from):

* ``mass_attenuation.json``: total mass attenuation coefficients mu/rho
  (cm^2/g) from 1 to 150 keV in 0.5 keV steps, from xraydb's elemental
  tables (Elam, Ravel and Sieber 2002) mixed by NIST/ICRU-44 mass fractions,
  for ``air``, ``water``, ``soft_tissue``, ``bone`` (cortical),
  ``titanium`` and ``aluminium``;
* ``tube_spectra.json``: tungsten-anode spectra from spekpy for 60-120 kVp
  (10 kVp apart), 12 deg anode, 2.5 mm Al, 1 keV bins.

Energies are in keV, mass attenuation in cm^2/g, densities in g/cm^3, mass
path lengths (density line integrals) in g/cm^2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import InputError

DATA = Path(__file__).resolve().parent / "data"
RESPONSES = ("energy_integrating", "photon_counting")
OUTPUTS = ("line_integral", "intensity")


@lru_cache(maxsize=None)
def _table(name: str) -> dict:
    path = DATA / name
    if not path.is_file():
        raise FileNotFoundError(f"physics table {path} is missing; reinstall DiffReg (it ships with the package)")
    return json.loads(path.read_text())


def material_names() -> tuple[str, ...]:
    """Materials with a mass attenuation table."""
    return tuple(_table("mass_attenuation.json")["materials"])


def nominal_density(material: str) -> float:
    """NIST nominal density of ``material`` (g/cm^3)."""
    return float(_material(material)["density_g_cm3"])


def _material(material: str) -> dict:
    table = _table("mass_attenuation.json")["materials"]
    if material not in table:
        raise InputError(f"unknown material {material!r}; known: {', '.join(table)}")
    return table[material]


def mass_attenuation(material: str, energies_kev) -> torch.Tensor:
    """mu/rho (cm^2/g, float64) of ``material`` at ``energies_kev`` (any shape), log-log interpolated.

    Energies must lie in the table's range (1-150 keV).
    """
    grid = torch.tensor(_table("mass_attenuation.json")["energies_keV"], dtype=torch.float64)
    values = torch.tensor(_material(material)["mu_over_rho_cm2_g"], dtype=torch.float64)
    e = torch.as_tensor(energies_kev, dtype=torch.float64)
    if not torch.isfinite(e).all() or (e < grid[0]).any() or (e > grid[-1]).any():
        raise InputError(f"energies must lie within {float(grid[0])}-{float(grid[-1])} keV")
    idx = torch.searchsorted(grid, e.reshape(-1)).clamp(1, len(grid) - 1)
    x0, x1 = grid[idx - 1].log(), grid[idx].log()
    y0, y1 = values[idx - 1].log(), values[idx].log()
    w = (e.reshape(-1).log() - x0) / (x1 - x0)
    return (y0 + w * (y1 - y0)).exp().reshape(e.shape)


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


@dataclass(frozen=True)
class Beam:
    """What the detector records of a spectrum after the patient.

    Args:
        spectrum: photon spectrum at the patient's entrance.
        response: ``"energy_integrating"`` (signal = deposited energy, each
            photon weighted by its energy: flat-panel detectors) or
            ``"photon_counting"`` (each photon counts 1).
        output: ``"line_integral"`` = -log(I / I0), comparable to a
            monochromatic DRR and to a log-transformed radiograph, or
            ``"intensity"`` = I / I0 (1 where nothing attenuates).
    """

    spectrum: Spectrum
    response: str = "energy_integrating"
    output: str = "line_integral"

    def __post_init__(self) -> None:
        if not isinstance(self.spectrum, Spectrum):
            raise InputError(f"spectrum must be a Spectrum, got {type(self.spectrum).__name__}")
        if self.response not in RESPONSES:
            raise InputError(f"unknown detector response {self.response!r}; choose one of {', '.join(RESPONSES)}")
        if self.output not in OUTPUTS:
            raise InputError(f"unknown output {self.output!r}; choose one of {', '.join(OUTPUTS)}")

    def weights(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies (E,), detector weights (E,) summing to 1) for this response."""
        e, f = self.spectrum.tensors(dtype, device)
        w = f * e if self.response == "energy_integrating" else f
        return e, w / w.sum()

    def attenuation_matrix(self, materials: tuple[str, ...], dtype=torch.float64, device=None) -> torch.Tensor:
        """mu/rho (M, E) in cm^2/g of each material at each bin energy."""
        e, _ = self.spectrum.tensors()
        return torch.stack([mass_attenuation(m, e) for m in materials]).to(dtype=dtype, device=device)

    def effective_mu_per_density(self, materials: tuple[str, ...]) -> torch.Tensor:
        """mu/rho (M,) in cm^2/g at the spectrum's mean energy (the monochromatic stand-in)."""
        return torch.stack([mass_attenuation(m, self.spectrum.mean_energy_kev) for m in materials])

    def detect(self, mass_paths: torch.Tensor, materials: tuple[str, ...]) -> torch.Tensor:
        """Detector signal from per-material mass paths (..., M) in g/cm^2 -> (...) as ``output`` says.

        I / I0 = sum_E w(E) exp(-sum_m mu_m(E) L_m), with w the response's
        normalised weights; differentiable w.r.t. the mass paths. Computed in
        the mass paths' dtype; for -log(I/I0) the least attenuated energy is
        factored out first, so thick paths do not underflow.
        """
        w, phi = _detector_tables(self, tuple(materials), mass_paths.dtype, mass_paths.device)  # (E,), (M, E)
        if mass_paths.shape[-1] != phi.shape[0]:
            raise InputError(f"{mass_paths.shape[-1]} mass paths for {phi.shape[0]} materials")
        # exponent (..., E) as M broadcast multiply-adds: a (N, M) @ (M, E) product with M = 3 is slower
        exponent = mass_paths[..., 0, None] * -phi[0]
        for m in range(1, phi.shape[0]):
            exponent = exponent - mass_paths[..., m, None] * phi[m]
        if self.output == "intensity":
            return torch.exp(exponent) @ w
        top = exponent.amax(-1).detach()  # the result does not depend on this shift
        return -top - torch.log(torch.exp(exponent - top[..., None]) @ w)


@lru_cache(maxsize=64)
def _detector_tables(beam: Beam, materials: tuple[str, ...], dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (E,), mu/rho (M, E)) of a beam, built once per beam, materials, dtype and device."""
    return beam.weights(dtype, device)[1], beam.attenuation_matrix(materials, dtype, device)
