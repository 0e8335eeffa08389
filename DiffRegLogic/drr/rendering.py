"""The public call: ``render(volume, detector, pose) -> (B, H, W)`` DRRs, tiled within a memory budget.

A DRR pixel is the line integral of the linear attenuation coefficient mu
(1/mm) along the ray from the X-ray source to the pixel centre: a
dimensionless number, larger = more attenuating (bone bright). Which code
integrates is chosen in `DiffRegLogic.drr.backends`.

A `DiffRegLogic.physics.materials.MaterialVolume` is rendered with the
polychromatic model (`polychromatic`): each density channel is traced as
above, then the energy sum of its beam turns the mass paths into the
detector signal.

The detector is rendered in tiles of rays of at most ``TILE_MB`` of working
memory each (smaller tiles stay in cache; measured fastest on CPU). When
gradients are needed and the intermediates of all tiles together would
exceed ``max_memory_mb``, each tile is checkpointed (its intermediates are
recomputed in backward), so autograd does not hold every tile's intermediates
at once; otherwise nothing is recomputed. Tiling does not change results.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.rigid import check_pose
from ..physics.materials import MaterialVolume
from ..volume.ct import Volume
from . import fused_triton, polychromatic
from .backends import (DEFAULT_MAX_MEMORY_MB, FUSED_BACKENDS, bytes_per_ray, check_render_options, field_integrator,
                       ray_dtype_for, rays_per_tile, resolve_backend)
from .rays import detector_pixels, pixel_rays


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
        step_voxels: trilinear step in voxels (ignored by Siddon), in `STEP_VOXELS_RANGE`; a trilinear ray
            takes at most `MAX_SAMPLES_PER_RAY` samples (longest CT axis / step), else InputError.
        max_memory_mb: working-memory budget (MB) of the whole call, forward and backward, in `MEMORY_MB_RANGE`.
        tile_rays: explicit number of pixels per tile, a whole number >= 1 (overrides the budget). The Triton backend
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
    step_voxels, max_memory_mb, tile_rays = check_render_inputs(volume, detector, renderer, step_voxels,
                                                                max_memory_mb, tile_rays)
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
    if volume_dtype is not None:
        if backend != "triton":
            raise InputError(f"volume_dtype is a storage option of the 'triton' backend; this render uses "
                             f"{backend!r} (pass backend='triton', or leave volume_dtype unset)")
        if volume_dtype not in fused_triton.STORAGE_DTYPES:
            raise InputError(f"volume_dtype must be torch.float32, torch.float16 or torch.bfloat16, got {volume_dtype}")
    integrate = field_integrator(renderer, step_voxels, backend, field, volume_dtype)
    ray_dtype = ray_dtype_for(backend, volume.mu)
    pose = check_pose(pose).to(device=volume.mu.device, dtype=ray_dtype)
    n_poses = pose.shape[0]
    needs_grad = torch.is_grad_enabled() and (pose.requires_grad or field.requires_grad or _detector_requires_grad(detector))
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


def check_render_inputs(volume, detector, renderer: str, step_voxels: float, max_memory_mb: float,
                        tile_rays: int | None = None) -> tuple[float, float, int | None]:
    """The entry checks of `render` (and `DRR`): the types of ``volume`` and ``detector``, then
    `check_render_options` on this CT; returns ``(step_voxels, max_memory_mb, tile_rays)`` normalised."""
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    return check_render_options(renderer, step_voxels, max_memory_mb, tile_rays, volume.shape_ijk)


def _detector_requires_grad(detector: Detector) -> bool:
    values = [detector.sdd, *detector.pixel_spacing]
    if detector.principal_point is not None:
        values += list(detector.principal_point)
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)
