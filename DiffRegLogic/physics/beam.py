"""What the detector records of a spectrum after the patient: `Beam` (spectrum, response, output).

Energies in keV, mass attenuation in cm^2/g, mass path lengths (density line
integrals) in g/cm^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import InputError
from . import OUTPUTS, RESPONSES
from .spectra import Spectrum
from .tables import mass_attenuation


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
