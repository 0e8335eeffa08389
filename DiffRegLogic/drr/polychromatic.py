"""Polychromatic, material-aware DRRs (the poster's Diff-DeepDRR model) of a `MaterialVolume`.

For detector pixel i,

    I_i / I0 = sum_E w(E) exp(-sum_m mu_m(E) L_m,i),   L_m,i = integral of rho_m along ray i,

with w the spectrum weighted by the detector response (`physics.Beam`),
mu_m(E) the mass attenuation of material m (cm^2/g) and L_m,i its mass path
(g/cm^2). The M mass paths are line integrals of the density channels,
rendered by the monochromatic machinery (`DiffRegLogic.drr.render`: Siddon or
trilinear, fused or reference backend, same tiling and memory budget), so
gradients reach the pose and intrinsics through them; the energy sum is a
small differentiable PyTorch expression per pixel.
"""

from __future__ import annotations

import torch

from ..geometry.detector import Detector
from ..physics.materials import MaterialVolume

MM_TO_CM = 0.1


def mass_paths(volume: MaterialVolume, detector: Detector, pose, renderer: str, render_fields, **options) -> torch.Tensor:
    """Per-material mass paths (B, H, W, M) in g/cm^2; ``render_fields`` integrates the density channels."""
    return render_fields(volume, detector, pose, renderer, field=volume.densities, **options) * MM_TO_CM


def render(volume: MaterialVolume, detector: Detector, pose, renderer: str, render_fields, **options) -> torch.Tensor:
    """(B, H, W) detector signal of ``volume.beam`` (-log(I/I0) or I/I0, see `physics.Beam`)."""
    return volume.beam.detect(mass_paths(volume, detector, pose, renderer, render_fields, **options), volume.materials)


def with_jacobian(volume: MaterialVolume, paths: torch.Tensor, jacobian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal (B, H, W) and its Jacobian (B, H, W, P) from the density channels' line integrals (B, H, W, M)
    and their Jacobians (B, H, W, M, P), in mm (chain rule through the energy sum)."""
    paths = paths * MM_TO_CM
    with torch.enable_grad():
        paths = paths.detach().requires_grad_(True)
        signal = volume.beam.detect(paths, volume.materials)
        (d_signal,) = torch.autograd.grad(signal.sum(), paths)  # pixels are independent: per-pixel derivatives
    return signal.detach(), torch.einsum("bhwm,bhwmp->bhwp", d_signal, jacobian * MM_TO_CM).to(signal.dtype)
