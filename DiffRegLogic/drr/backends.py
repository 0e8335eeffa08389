"""Which code integrates mu along the rays: the ``(renderer, backend) -> integrator`` table.

Renderers (``renderer=``): ``"siddon"`` (exact radiological path through the
voxel grid, piecewise-constant mu, as in the seed paper) and ``"trilinear"``
(ray marching with trilinear interpolation, ``step_voxels`` voxels per step).
Backends (``backend=``):

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

Every pair is one `Integrator` in `INTEGRATORS`: an ``integrate(mu, rays) ->
(B, R)`` function over a `RayBundle` in index space and the working memory
one ray needs, which sizes the detector tiles. A new renderer or backend is a
new entry here (plus its kernels), not a new branch in `render`.

This module imports no torch, numba or Triton until an integrator is used,
so that the command line tool can list the choices cheaply.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from ..errors import InputError
from ..limits import MAX_SAMPLES_PER_RAY, MEMORY_MB_RANGE, STEP_VOXELS_RANGE, check_number

RENDERERS: dict[str, str] = {"siddon": "exact radiological path", "trilinear": "trilinear ray marching"}
BACKENDS = ("auto", "fused", "triton", "reference")
FUSED_BACKENDS = ("fused", "triton")  # per-ray memory, analytic backward, no gradient w.r.t. mu

DEFAULT_MAX_MEMORY_MB = 2048.0
# Working memory of one tile: 256 MB was the fastest tile on 2 CPU cores for both renderers
# (sweep of 32..2048 MB on the benchmark CT, 200 x 200 detector).
TILE_MB = 256.0


@dataclass(frozen=True)
class Integrator:
    """One renderer on one backend.

    ``module`` (relative to this package) holds the code; ``call(module, mu,
    rays, renderer, step_voxels, volume_dtype)`` integrates; ``per_ray(module,
    shape_ijk, step_voxels)`` is the working memory of one ray in bytes (for a
    float32 volume; the reference scales it with the element size);
    ``uses_step`` says whether ``step_voxels`` matters (it is then checked).
    """

    module: str
    call: Callable
    per_ray: Callable
    uses_step: bool = True

    def load(self):
        return import_module(self.module, __package__)


def _reference_siddon(m, mu, rays, renderer, step_voxels, volume_dtype):
    return m.integrate(mu, rays)


def _reference_trilinear(m, mu, rays, renderer, step_voxels, volume_dtype):
    return m.integrate(mu, rays, step_voxels)


def _fused(m, mu, rays, renderer, step_voxels, volume_dtype):
    return m.integrate(mu, rays, renderer, step_voxels)


def _triton(m, mu, rays, renderer, step_voxels, volume_dtype):
    return m.integrate(mu, rays, renderer, step_voxels, volume_dtype)


def _samples_siddon(m, shape, step_voxels):
    return m.max_samples_per_ray(shape) * m.BYTES_PER_SAMPLE


def _samples_trilinear(m, shape, step_voxels):
    return m.max_samples_per_ray(shape, step_voxels) * m.BYTES_PER_SAMPLE


def _constant(m, shape, step_voxels):
    return m.BYTES_PER_RAY


INTEGRATORS: dict[tuple[str, str], Integrator] = {
    ("siddon", "reference"): Integrator(".siddon", _reference_siddon, _samples_siddon, uses_step=False),
    ("trilinear", "reference"): Integrator(".trilinear", _reference_trilinear, _samples_trilinear),
    ("siddon", "fused"): Integrator(".fused_cpu", _fused, _constant),
    ("trilinear", "fused"): Integrator(".fused_cpu", _fused, _constant),
    ("siddon", "triton"): Integrator(".fused_triton", _triton, _constant),
    ("trilinear", "triton"): Integrator(".fused_triton", _triton, _constant),
}
"""(renderer, concrete backend) -> `Integrator`: where the Siddon and trilinear kernels of every backend live."""


def _entry(renderer: str, backend: str) -> Integrator:
    if not isinstance(renderer, str) or renderer not in RENDERERS:
        raise InputError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")
    entry = INTEGRATORS.get((renderer, backend))
    if entry is None:
        raise InputError(f"no {renderer} integrator for backend {backend!r}; backends: {', '.join(BACKENDS)}")
    return entry


def check_render_options(renderer: str, step_voxels: float, max_memory_mb: float, tile_rays: int | None = None,
                         shape_ijk: tuple[int, int, int] | None = None) -> tuple[float, float, int | None]:
    """``(step_voxels, max_memory_mb, tile_rays)`` checked against `DiffRegLogic.limits`, else `InputError`.

    ``step_voxels`` (voxels) must lie in `STEP_VOXELS_RANGE` (also for Siddon,
    which ignores it), ``max_memory_mb`` (MB) in `MEMORY_MB_RANGE`,
    ``tile_rays`` be None or a whole number >= 1. With ``shape_ijk`` (the CT's
    voxels along i, j, k) the most samples (trilinear) or plane crossings
    (Siddon) one ray can take must stay within `MAX_SAMPLES_PER_RAY`, so
    that no ray runs for hours.
    """
    _entry(renderer, "reference")
    try:
        step = check_number("step_voxels", step_voxels, *STEP_VOXELS_RANGE, unit="voxels")
    except InputError as exc:
        raise InputError(f"{exc}; it is the trilinear renderer's step along the ray (1 voxel is the usual, "
                         "smaller is more accurate and slower)") from None
    try:
        memory = check_number("max_memory_mb", max_memory_mb, *MEMORY_MB_RANGE, unit="MB")
    except InputError as exc:
        raise InputError(f"{exc}; it is the working-memory budget of one render (default "
                         f"{DEFAULT_MAX_MEMORY_MB:g} MB)") from None
    tiles = None
    if tile_rays is not None:
        hint = "; it is the number of detector pixels rendered together (leave it unset to size tiles by memory)"
        if isinstance(tile_rays, numbers.Integral) and not isinstance(tile_rays, bool) and tile_rays < 1:
            shown = tile_rays if tile_rays > -10**15 else "a huge negative integer"
            raise InputError(f"tile_rays must be at least 1, got {shown}{hint}")
        try:
            tiles = check_number("tile_rays", tile_rays, 1, None, integer=True)
        except InputError as exc:
            raise InputError(f"{exc}{hint}") from None
    if shape_ijk is not None:
        longest = max(int(n) for n in shape_ijk)
        if renderer == "trilinear":
            samples = math.ceil(longest / step) + 2  # as trilinear.max_samples_per_ray
            if samples > MAX_SAMPLES_PER_RAY:
                smallest = longest / (MAX_SAMPLES_PER_RAY - 2)
                raise InputError(
                    f"step_voxels = {step:g} gives up to {samples} trilinear samples per ray on this CT "
                    f"({longest} voxels along its longest axis / step), more than the limit of "
                    f"{MAX_SAMPLES_PER_RAY} that keeps a render finite in time; use step_voxels >= {smallest:.3g}, "
                    "the siddon renderer (exact, no step) or a downsampled CT")
        else:
            crossings = sum(int(n) for n in shape_ijk) + 5  # as siddon.max_samples_per_ray
            if crossings > MAX_SAMPLES_PER_RAY:
                raise InputError(
                    f"a Siddon ray can cross up to {crossings} voxel planes of this CT of {tuple(shape_ijk)} voxels, "
                    f"more than the limit of {MAX_SAMPLES_PER_RAY} that keeps a render finite in time; "
                    "downsample the CT (volume.downsample)")
    return step, memory, tiles


def integrator(renderer: str, step_voxels: float, backend: str = "reference"
               ) -> tuple[Callable, Callable[[tuple[int, int, int]], float]]:
    """``(integrate(mu, rays, volume_dtype=None) -> (B, R), bytes_per_ray(shape_ijk))`` for a concrete backend."""
    entry = _entry(renderer, backend)
    if entry.uses_step and not (step_voxels > 0):
        raise InputError(f"step_voxels must be positive, got {step_voxels}")
    module = entry.load()

    def integrate(mu, rays, volume_dtype=None):
        return entry.call(module, mu, rays, renderer, step_voxels, volume_dtype)

    return integrate, lambda shape: entry.per_ray(module, shape, step_voxels)


def resolve_backend(backend: str, mu, mu_grad: bool = False) -> str:
    """``"fused"``, ``"triton"`` or ``"reference"`` for this volume; InputError when ``backend`` cannot be honoured."""
    import torch

    from . import fused_cpu, fused_triton

    if not isinstance(backend, str) or backend not in BACKENDS:
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


def ray_dtype_for(backend: str, mu):
    """dtype the rays are built in: float64 for the numba kernels (they compute in float64 anyway, and the DRR
    is then a smooth function of the pose down to float64 rounding), float32 for Triton (its geometry is
    float32), mu's dtype for the reference."""
    import torch

    return {"fused": torch.float64, "triton": torch.float32}.get(backend, mu.dtype)


def field_integrator(renderer: str, step_voxels: float, backend: str, field, volume_dtype=None) -> Callable:
    """integrate(field, rays): (B, R) for a (K, J, I) field; (B, R, C) for (C, K, J, I), channel after channel.

    ``volume_dtype``: the Triton backend's storage dtype (None: the field's).
    """
    import torch

    integrate_one, _ = integrator(renderer, step_voxels, backend)
    if field.ndim == 3:
        return lambda mu, rays: integrate_one(mu, rays, volume_dtype)

    def integrate(mu, rays):
        return torch.stack([integrate_one(mu[c], rays, volume_dtype) for c in range(mu.shape[0])], -1)

    return integrate


def bytes_per_ray(volume, n_poses: int, renderer: str = "siddon", step_voxels: float = 1.0,
                  backend: str = "reference") -> float:
    """Estimated working memory (bytes) of one detector pixel for ``n_poses`` poses (upper bound)."""
    _, per_ray = integrator(renderer, step_voxels, backend)
    if backend in FUSED_BACKENDS:
        return per_ray(volume.shape_ijk) * n_poses
    return per_ray(volume.shape_ijk) * n_poses * volume.mu.element_size() / 4


def rays_per_tile(volume, n_poses: int, renderer: str = "siddon", step_voxels: float = 1.0,
                  max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, backend: str = "reference") -> int:
    """How many detector pixels one tile holds.

    Reference: ``min(max_memory_mb, TILE_MB)`` of working memory (small
    tiles stay in cache). Fused: the whole budget, since its memory is per
    ray, not per sample (Triton likewise; its renders without autograd build
    their rays in the kernel and are not tiled at all).
    """
    cap = max_memory_mb if backend in FUSED_BACKENDS else min(max_memory_mb, TILE_MB)
    return max(1, int(cap * 2**20 // bytes_per_ray(volume, n_poses, renderer, step_voxels, backend)))
