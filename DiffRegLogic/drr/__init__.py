"""Differentiable DRR rendering: ``render(volume, detector, pose) -> (B, H, W)``.

A DRR pixel is the line integral of the linear attenuation coefficient mu
(1/mm) along the ray from the X-ray source to the pixel centre: a
dimensionless number, larger = more attenuating (bone bright).

Renderers (``renderer=``):

* ``"siddon"``: exact radiological path through the voxel grid
  (piecewise-constant mu), as in the seed paper.
* ``"trilinear"``: ray marching with trilinear interpolation, rays clipped to
  the volume, ``step_voxels`` voxels per step.

Each renderer is an ``integrate(mu, rays) -> (B, R)`` function over a
`RayBundle` in index space, in two backends (``backend=``):

* ``"fused"``: compiled loops over rays on the CPU (numba, `fused_cpu`) with
  an analytic backward for the pose and intrinsics that stores nothing per
  sample: the fast path;
* ``"triton"``: the same fused design as Triton kernels (`fused_triton`) for
  CUDA tensors: float32 geometry and accumulation, the volume optionally
  stored in float16/bfloat16 (``volume_dtype=``), deterministic (no
  atomics). On CPU tensors it runs only under Triton's interpreter
  (``TRITON_INTERPRET=1``), which is how CI tests it;
* ``"reference"``: the pure-PyTorch renderers (`siddon`, `trilinear`), on
  any device, differentiable w.r.t. mu too; the fused paths are tested
  against them;
* ``"auto"`` (default): on CUDA, triton when it imports and the volume is
  float32/float16/bfloat16; on the CPU, fused when numba is installed; the
  reference otherwise, and always when a gradient w.r.t. mu is asked for.

A `DiffRegLogic.materials.MaterialVolume` is rendered with the polychromatic
model (`polychromatic`): each density channel is traced as above, then the
energy sum of its beam turns the mass paths into the detector signal.

The detector is rendered in tiles of rays of at most ``TILE_MB`` of working
memory each (smaller tiles stay in cache; measured fastest on CPU). When
gradients are needed and the intermediates of all tiles together would
exceed ``max_memory_mb``, each tile is checkpointed (its intermediates are
recomputed in backward), so autograd does not hold every tile's intermediates
at once; otherwise nothing is recomputed. Tiling does not change results.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..geometry import Detector, check_pose
from ..materials import MaterialVolume
from ..volume import Volume
from . import fused_cpu, fused_triton, polychromatic, siddon, trilinear
from .rays import RayBundle, clip_to_box, detector_pixels, pixel_rays

__all__ = ["render", "RENDERERS", "BACKENDS", "FUSED_BACKENDS", "ray_dtype_for", "RayBundle", "pixel_rays", "clip_to_box", "resolve_backend"]

RENDERERS: dict[str, str] = {"siddon": "exact radiological path", "trilinear": "trilinear ray marching"}
BACKENDS = ("auto", "fused", "triton", "reference")
FUSED_BACKENDS = ("fused", "triton")  # per-ray memory, analytic backward, no gradient w.r.t. mu

DEFAULT_MAX_MEMORY_MB = 2048.0
# Working memory of one tile: 256 MB was the fastest tile on 2 CPU cores for both renderers
# (sweep of 32..2048 MB on the benchmark CT, 200 x 200 detector).
TILE_MB = 256.0


def resolve_backend(backend: str, mu: torch.Tensor, mu_grad: bool = False) -> str:
    """``"fused"``, ``"triton"`` or ``"reference"`` for this volume; InputError when ``backend`` cannot be honoured."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        why = fused_triton.unavailable_reason(mu, mu_grad)
        if why is not None:
            raise InputError(f"backend 'triton' is not available here: {why}")
        return "triton"
    if backend == "auto" and mu.device.type == "cuda":
        return "triton" if fused_triton.unavailable_reason(mu, mu_grad) is None else "reference"
    real = mu.dtype in (torch.float32, torch.float64)
    fused_ok = fused_cpu.AVAILABLE and mu.device.type == "cpu" and not mu_grad and real
    if backend == "fused" and not fused_ok:
        why = ("numba is not installed (pip install numba)" if not fused_cpu.AVAILABLE else
               "it runs on the CPU only (use backend='triton' or 'reference' on CUDA)" if mu.device.type != "cpu" else
               f"it takes float32 or float64 volumes, not {mu.dtype}" if not real else
               "it has no gradient w.r.t. mu (use backend='reference')")
        raise InputError(f"backend 'fused' is not available here: {why}")
    return "fused" if fused_ok else "reference"


def ray_dtype_for(backend: str, mu: torch.Tensor) -> torch.dtype:
    """dtype the rays are built in: float64 for the numba kernels (they compute in float64 anyway, and the DRR
    is then a smooth function of the pose down to float64 rounding), float32 for Triton (its geometry is
    float32), mu's dtype for the reference."""
    return {"fused": torch.float64, "triton": torch.float32}.get(backend, mu.dtype)


def _integrator(renderer: str, step_voxels: float, backend: str = "reference"
                ) -> tuple[Callable[[torch.Tensor, RayBundle], torch.Tensor], Callable]:
    """(integrate(mu, rays), bytes of working memory per ray for a volume shape)."""
    if renderer in RENDERERS and backend == "fused":
        if not (step_voxels > 0):
            raise InputError(f"step_voxels must be positive, got {step_voxels}")

        def fused(mu, rays):
            return fused_cpu.integrate(mu, rays, renderer, step_voxels)

        return fused, lambda shape: fused_cpu.BYTES_PER_RAY
    if renderer in RENDERERS and backend == "triton":
        if not (step_voxels > 0):
            raise InputError(f"step_voxels must be positive, got {step_voxels}")

        def on_gpu(mu, rays, volume_dtype=None):
            return fused_triton.integrate(mu, rays, renderer, step_voxels, volume_dtype)

        return on_gpu, lambda shape: fused_triton.BYTES_PER_RAY
    if renderer == "siddon":
        return siddon.integrate, lambda shape: siddon.max_samples_per_ray(shape) * siddon.BYTES_PER_SAMPLE
    if renderer == "trilinear":
        if not (step_voxels > 0):
            raise InputError(f"step_voxels must be positive, got {step_voxels}")

        def run(mu, rays):
            return trilinear.integrate(mu, rays, step_voxels)

        return run, lambda shape: trilinear.max_samples_per_ray(shape, step_voxels) * trilinear.BYTES_PER_SAMPLE
    raise InputError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")


def _field_integrator(renderer: str, step_voxels: float, backend: str, field: torch.Tensor,
                      volume_dtype: torch.dtype | None = None) -> Callable:
    """integrate(field, rays): (B, R) for a (K, J, I) field; (B, R, C) for (C, K, J, I), channel after channel.

    ``volume_dtype``: the Triton backend's storage dtype (None: the field's).
    """
    integrate_one, _ = _integrator(renderer, step_voxels, backend)
    if volume_dtype is not None:
        plain_one = integrate_one

        def integrate_one(mu: torch.Tensor, rays: RayBundle) -> torch.Tensor:
            return plain_one(mu, rays, volume_dtype)
    if field.ndim == 3:
        return integrate_one

    def integrate(mu: torch.Tensor, rays: RayBundle) -> torch.Tensor:
        return torch.stack([integrate_one(mu[c], rays) for c in range(mu.shape[0])], -1)

    return integrate


def bytes_per_ray(volume: Volume, n_poses: int, renderer: str = "siddon", step_voxels: float = 1.0,
                  backend: str = "reference") -> float:
    """Estimated working memory (bytes) of one detector pixel for ``n_poses`` poses (upper bound)."""
    _, per_ray = _integrator(renderer, step_voxels, backend)
    if backend in FUSED_BACKENDS:
        return per_ray(volume.shape_ijk) * n_poses
    return per_ray(volume.shape_ijk) * n_poses * volume.mu.element_size() / 4


def rays_per_tile(volume: Volume, n_poses: int, renderer: str = "siddon", step_voxels: float = 1.0,
                  max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, backend: str = "reference") -> int:
    """How many detector pixels one tile holds.

    Reference: ``min(max_memory_mb, TILE_MB)`` of working memory (small
    tiles stay in cache). Fused: the whole budget, since its memory is per
    ray, not per sample (Triton likewise; its renders without autograd build
    their rays in the kernel and are not tiled at all).
    """
    cap = max_memory_mb if backend in FUSED_BACKENDS else min(max_memory_mb, TILE_MB)
    return max(1, int(cap * 2**20 // bytes_per_ray(volume, n_poses, renderer, step_voxels, backend)))


def render(
    volume: Volume,
    detector: Detector,
    pose,
    renderer: str = "siddon",
    *,
    step_voxels: float = 1.0,
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB,
    tile_rays: int | None = None,
    backend: str = "auto",
    volume_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Render DRRs of ``volume`` for one or B poses.

    Args:
        volume: attenuation volume (its ``mu`` dtype and device are used).
        detector: detector geometry (intrinsics may be tensors with grad).
        pose: camera_from_world, (4, 4) or (B, 4, 4), mm; may require grad.
        renderer: "siddon" or "trilinear".
        step_voxels: trilinear step in voxels (ignored by Siddon).
        max_memory_mb: working-memory budget (MB) of the whole call, forward and backward.
        tile_rays: explicit number of pixels per tile (overrides the budget). The Triton backend
            without autograd does not tile: it builds each ray inside its kernel.
        backend: "auto", "fused", "triton" or "reference" (see the module docstring).
        volume_dtype: storage dtype of the volume for the Triton kernels (torch.float16 or
            torch.bfloat16 halve the bytes each sample reads; accumulation stays float32). The
            converted copy is made once per volume and remembered. None (default): mu's dtype.
            Only the Triton backend takes it (InputError otherwise).

    Returns:
        (B, H, W) line integrals of mu, dtype of ``volume.mu``; for a
        `MaterialVolume`, the polychromatic signal its beam defines
        (`DiffRegLogic.drr.polychromatic`), with ``renderer`` tracing the
        density channels.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    options = dict(step_voxels=step_voxels, max_memory_mb=max_memory_mb, tile_rays=tile_rays, backend=backend,
                   volume_dtype=volume_dtype)
    if isinstance(volume, MaterialVolume):
        return polychromatic.render(volume, detector, pose, renderer, _render_line_integrals, **options)
    return _render_line_integrals(volume, detector, pose, renderer, **options)


def _render_line_integrals(volume: Volume, detector: Detector, pose, renderer: str, *, step_voxels: float,
                           max_memory_mb: float, tile_rays: int | None, backend: str,
                           volume_dtype: torch.dtype | None = None, field: torch.Tensor | None = None) -> torch.Tensor:
    """Line integrals (B, H, W) of ``volume.mu``: `render` for a monochromatic volume.

    With ``field`` (C, K, J, I) on the volume's grid (the density channels of
    a `MaterialVolume`), the line integrals of its C channels instead,
    (B, H, W, C), one channel after the other along the same rays. (A fused
    kernel tracing all channels in one traversal, with per-channel sums in
    small arrays, measured no faster than this for C = 3 with Siddon and 1.5x
    slower with trilinear on 2 CPU cores, so it is not used.)
    """
    field = volume.mu if field is None else field
    n_channels = field.shape[0] if field.ndim == 4 else 1
    mu_grad = torch.is_grad_enabled() and field.requires_grad
    backend = resolve_backend(backend, field, mu_grad)
    if not (max_memory_mb > 0):
        raise InputError(f"max_memory_mb must be a positive number of MB, got {max_memory_mb}")
    if volume_dtype is not None:
        if backend != "triton":
            raise InputError(f"volume_dtype is a storage option of the 'triton' backend; this render uses "
                             f"{backend!r} (pass backend='triton', or leave volume_dtype unset)")
        if volume_dtype not in fused_triton.STORAGE_DTYPES:
            raise InputError(f"volume_dtype must be torch.float32, torch.float16 or torch.bfloat16, got {volume_dtype}")
    integrate = _field_integrator(renderer, step_voxels, backend, field, volume_dtype)
    ray_dtype = ray_dtype_for(backend, volume.mu)
    pose = check_pose(pose).to(device=volume.mu.device, dtype=ray_dtype)
    n_poses = pose.shape[0]
    needs_grad = torch.is_grad_enabled() and (pose.requires_grad or field.requires_grad or _detector_requires_grad(detector))
    if tile_rays is not None and tile_rays < 1:
        raise InputError(f"tile_rays must be at least 1, got {tile_rays}")
    if backend == "triton" and not needs_grad and field.ndim == 3:
        # no autograd: one kernel builds the rays itself (memory = volume + output; tiles are not needed)
        try:
            out = fused_triton.render_without_grad(
                fused_triton.storage(volume.mu, volume_dtype), volume.affine, detector.rows, detector.cols,
                detector.tensors(torch.float64, volume.mu.device), pose.detach(), renderer, step_voxels)
        except torch.cuda.OutOfMemoryError as exc:
            raise MemoryError(f"the GPU ran out of memory for a {n_poses} x {detector.rows} x {detector.cols} "
                              "DRR output") from exc
        return out.to(volume.mu.dtype)
    pixels = detector_pixels(detector, ray_dtype, volume.mu.device)
    n_rays = pixels.shape[0]
    n_work = n_poses * n_channels  # working memory grows with both
    if tile_rays is None:
        tile_rays = rays_per_tile(volume, n_work, renderer, step_voxels, max_memory_mb, backend)
    if tile_rays < 1:
        raise InputError(f"tile_rays must be at least 1, got {tile_rays}")
    tile_rays = min(tile_rays, n_rays)

    def one_tile(p: torch.Tensor, pix: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        rays = pixel_rays(volume, detector, p, pix, ray_dtype)
        return integrate(mu, rays).to(volume.mu.dtype)

    n_tiles = math.ceil(n_rays / tile_rays)
    # recompute tiles in backward only when keeping every tile's intermediates would break the budget
    # (the fused backends keep only per-ray partials: recomputing would rerun their kernels for nothing)
    recompute = needs_grad and backend not in FUSED_BACKENDS and n_tiles > 1 and (
        n_rays * bytes_per_ray(volume, n_work, renderer, step_voxels, backend) > max_memory_mb * 2**20)
    try:
        tiles = []
        for start in range(0, n_rays, tile_rays):
            pix = pixels[start:start + tile_rays]
            if recompute:
                tiles.append(checkpoint(one_tile, pose, pix, field, use_reentrant=False))
            else:
                tiles.append(one_tile(pose, pix, field))
    except torch.cuda.OutOfMemoryError as exc:
        raise MemoryError(
            f"the GPU ran out of memory rendering a {detector.rows}x{detector.cols} DRR for {n_poses} pose(s) "
            f"with tiles of {tile_rays} rays; lower max_memory_mb (now {max_memory_mb}) or render on the CPU"
        ) from exc
    out = torch.cat(tiles, dim=1) if len(tiles) > 1 else tiles[0]
    return out.reshape(n_poses, detector.rows, detector.cols, *out.shape[2:])


def _detector_requires_grad(detector: Detector) -> bool:
    values = [detector.sdd, *detector.pixel_spacing]
    if detector.principal_point is not None:
        values += list(detector.principal_point)
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)
