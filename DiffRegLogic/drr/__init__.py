"""Differentiable DRR rendering: ``render(volume, detector, pose) -> (B, H, W)``.

A DRR pixel is the line integral of the linear attenuation coefficient mu
(1/mm) along the ray from the X-ray source to the pixel centre: a
dimensionless number, larger = more attenuating (bone bright).

Modules:

* `rendering`: `render`, the public call (tiling, memory budget, polychromatic volumes);
* `backends`: the ``(renderer, backend) -> integrator`` table, backend choice;
* `rays`: rays of detector pixels in index space, clipped to the volume box;
* `footprint`: the pixels whose rays cross the CT's box at a pose (a mask for truncated CTs);
* `siddon`, `trilinear`: the pure-PyTorch reference renderers;
* `fused_cpu`: the numba kernels (CPU) with analytic backward;
* `numba_cache`: where they are cached (a per-user folder when the install is read-only);
* `fused_triton`, `triton_kernels`: the Triton kernels (CUDA);
* `jacobian`: DRRs and their Jacobian w.r.t. pose parameters (Levenberg-Marquardt);
* `polychromatic`: the energy sum of a `MaterialVolume`;
* `module`: `DRR`, a thin ``torch.nn.Module`` over `render` for use inside networks;
* `radiograph`: a realistic radiograph (render + `physics.realism`).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".rendering": "render",
    ".backends": "RENDERERS BACKENDS FUSED_BACKENDS DEFAULT_MAX_MEMORY_MB TILE_MB Integrator INTEGRATORS integrator "
                 "resolve_backend ray_dtype_for bytes_per_ray rays_per_tile",
    ".rays": "RayBundle pixel_rays clip_to_box detector_pixels",
    ".footprint": "footprint_mask masked_by_footprint",
    ".jacobian": "render_with_jacobian",
    ".module": "DRR",
    ".radiograph": "simulate_radiograph",
})
__all__ = sorted(__getattr__.table)
