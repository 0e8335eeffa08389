"""Fused GPU renderers (Triton): one program per block of rays, with an analytic backward.

The GPU counterpart of `fused_cpu` (same math, same per-ray partials; the
kernels are in `triton_kernels`). Both renderers compute exactly what the
PyTorch reference renderers compute (`siddon`, `trilinear`), ray by ray, and
store nothing per sample:

* forward: ``value[n]`` = integral of mu along ray n between ``t_near`` and
  ``t_far`` (alpha units; `integrate` multiplies by the ray length in mm);
* without autograd (`render_without_grad`), the rays are built inside the
  kernel from a small per-pose table: one launch, no per-ray tensors, memory
  = volume + output;
* with a gradient wanted, the same pass also writes each ray's 8 partial
  derivatives d value / d (source (3), direction (3), t_near, t_far) (index
  space); the backward only scales them by the upstream gradient, and
  autograd chains them through the ray construction (`rays.pixel_rays`) to
  the pose and the intrinsics, as for the reference. Batched poses are
  B * R independent rays.

Precision: geometry and accumulation in float32. The volume may be stored in
float32, float16 or bfloat16 (``volume_dtype`` in `integrate` and
`DiffRegLogic.drr.render`): half storage halves the bytes the gathers read;
every sample is converted to float32 before it is used.

Determinism: each ray's sums run in a fixed order inside one program, with no
atomics, so two runs give bitwise equal values and gradients (the backward
is an elementwise product).

Devices: CUDA tensors with a working Triton; CPU tensors only under Triton's
interpreter (``TRITON_INTERPRET=1`` set before the first Triton render), which
is how CI tests these kernels without a GPU (slow: small cases only). There
is no gradient w.r.t. mu (use the reference backend for that).
"""

from __future__ import annotations

import importlib
import os
import weakref

import torch
from torch.autograd.function import once_differentiable

from ..volume.cache import tensor_cache

# Working memory per ray (bytes) of a forward+backward through `render`: the float32 ray tensors that
# autograd keeps (pixel, camera and world points, source, direction, length, t_near, t_far and the
# intermediates of their construction), the (N, 8) partials and the output. An upper-bound estimate
# used only to size tiles.
BYTES_PER_RAY = 384

# Rays per program. 128 keeps the per-ray registers of the gradient kernels within one warp group's
# budget; a first guess, to be tuned on the GPU (bench/gpu_session.sh).
BLOCK = 128

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_KERNELS = None


def available() -> bool:
    """True when triton imports (it is not imported by the engine until a Triton render)."""
    try:
        importlib.import_module("triton")
    except Exception:  # ImportError, or a broken install
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def unavailable_reason(mu: torch.Tensor, mu_grad: bool = False) -> str | None:
    """Why the Triton backend cannot render this volume (a sentence fragment), or None when it can."""
    if not available():
        return "triton is not installed (pip install triton; Linux with an NVIDIA GPU)"
    if mu.device.type == "cpu" and not interpreter_enabled():
        return ("it runs on CUDA tensors; on the CPU only under Triton's interpreter (set TRITON_INTERPRET=1 "
                "before the first render; slow, for tests)")
    if mu.device.type not in ("cpu", "cuda"):
        return f"it runs on CUDA tensors, not on {mu.device.type}"
    if mu.dtype not in STORAGE_DTYPES:
        return f"it takes float32, float16 or bfloat16 volumes, not {mu.dtype} (convert with volume.mu.float())"
    if mu_grad:
        return "it has no gradient w.r.t. mu (use backend='reference')"
    return None


def _kernels():
    """The Triton kernels, imported (and decorated: compiled or interpreted) on first use."""
    global _KERNELS
    if _KERNELS is None:
        from . import triton_kernels

        _KERNELS = triton_kernels
    return _KERNELS


# Storage copies of volumes in another dtype (volume_dtype), so that repeated renders of the same CT
# convert it once. Keyed on the identity of the mu tensor and held weakly, as volume.downsample_cached.
_STORAGE: dict[int, tuple[weakref.ref, dict]] = {}


def storage(mu: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """mu (K, J, I) as the kernels read it: contiguous, in ``dtype`` (default: its own), detached.

    A converted copy is remembered per mu tensor (invalidated when mu is
    modified in place) so that a registration converts its volume once.
    """
    if dtype is None or dtype == mu.dtype:
        return mu.detach().contiguous()
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"volume_dtype must be one of {STORAGE_DTYPES}, got {dtype}")
    copies = tensor_cache(_STORAGE, mu)
    key = (dtype, mu._version)
    if key not in copies:
        copies.clear()
        copies[key] = mu.detach().to(dtype).contiguous()
    return copies[key]


def launch(vol: torch.Tensor, src: torch.Tensor, d: torch.Tensor, tn: torch.Tensor, tf: torch.Tensor,
           renderer: str, step_voxels: float, with_grad: bool, block: int = BLOCK
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run one kernel on float32 rays.

    Args:
        vol: (K, J, I) contiguous volume in a storage dtype.
        src, d: (N, 3) float32 contiguous ray sources and directions (index space).
        tn, tf: (N,) float32 contiguous entry and exit alpha.
        renderer: "siddon" or "trilinear"; step_voxels: trilinear step (voxels).
        with_grad: also compute the (N, 8) partials.

    Returns:
        (N,) float32 integrals (alpha units) and the (N, 8) float32 partials or None.
    """
    kernels = _kernels()
    n = src.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=src.device)
    partials = torch.empty((n, 8), dtype=torch.float32, device=src.device) if with_grad else None
    if n == 0:
        return out, partials
    nk, nj, ni = vol.shape
    grid = ((n + block - 1) // block,)
    part = partials if partials is not None else out  # not written without WITH_GRAD
    flat = vol.reshape(-1)
    if renderer == "trilinear":
        kernels.trilinear_kernel[grid](flat, src, d, tn, tf, out, part, n, ni, nj, nk, float(step_voxels),
                                       WITH_GRAD=with_grad, BLOCK=block)
    elif renderer == "siddon":
        kernels.siddon_kernel[grid](flat, src, d, tn, tf, out, part, n, ni, nj, nk,
                                    WITH_GRAD=with_grad, BLOCK=block)
    else:
        raise ValueError(f"unknown renderer {renderer!r}")
    return out, partials


def camera_table(affine: torch.Tensor, sdd, du, dv, cx, cy, pose: torch.Tensor) -> torch.Tensor:
    """The per-pose table of the camera kernels: (B, 17) float32.

    Row b: A = index_from_world[:3, :3] @ R_b^T (3 x 3, row-major), the source
    in index space ``index_from_world @ (-R_b^T t_b)``, then sdd, du, dv, cx,
    cy (mm, mm, mm, px, px). ``affine`` is the volume's (4, 4) ijk -> RAS,
    ``pose`` (B, 4, 4) camera_from_world; computed in float64, then rounded.
    """
    # inv_ex: no error check, so no device-to-host sync on CUDA (the Volume checked that the affine is regular)
    inv = torch.linalg.inv_ex(affine.to(torch.float64)).inverse
    lin, off = inv[:3, :3], inv[:3, 3]
    pose = pose.to(torch.float64)
    rot_t = pose[:, :3, :3].transpose(-1, -2)
    a = lin @ rot_t  # (B, 3, 3)
    src = -(a @ pose[:, :3, 3:4])[..., 0] + off  # (B, 3)
    n = pose.shape[0]
    intrinsics = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=pose.device).detach()
                              for x in (sdd, du, dv, cx, cy)])
    return torch.cat([a.reshape(n, 9), src, intrinsics.expand(n, 5)], -1).to(torch.float32).contiguous()


def render_without_grad(vol: torch.Tensor, affine: torch.Tensor, rows: int, cols: int, intrinsics,
                        pose: torch.Tensor, renderer: str, step_voxels: float, block: int = BLOCK) -> torch.Tensor:
    """DRRs (B, rows, cols) float32 with the rays built inside the kernel: one launch, no per-ray tensors.

    Args:
        vol: (K, J, I) contiguous volume in a storage dtype (`storage`).
        affine: (4, 4) ijk -> RAS of the volume.
        rows, cols: detector size; intrinsics: (sdd, du, dv, cx, cy) as `Detector.tensors` returns them.
        pose: (B, 4, 4) camera_from_world.
    Nothing is differentiable (callers use it under ``torch.no_grad()`` semantics).
    """
    kernels = _kernels()
    table = camera_table(affine, *intrinsics, pose)
    n_poses = pose.shape[0]
    pixels = rows * cols
    n = n_poses * pixels
    if n >= 2**31:
        raise ValueError(f"the Triton renderer indexes rays with int32: {n_poses} x {rows} x {cols} rays is too many")
    out = torch.empty(n, dtype=torch.float32, device=vol.device)
    nk, nj, ni = vol.shape
    grid = ((n + block - 1) // block,)
    if renderer == "trilinear":
        kernels.trilinear_camera_kernel[grid](vol.reshape(-1), table, out, n, pixels, cols, ni, nj, nk,
                                              float(step_voxels), BLOCK=block)
    elif renderer == "siddon":
        kernels.siddon_camera_kernel[grid](vol.reshape(-1), table, out, n, pixels, cols, ni, nj, nk, BLOCK=block)
    else:
        raise ValueError(f"unknown renderer {renderer!r}")
    return out.reshape(n_poses, rows, cols)


class _TritonIntegral(torch.autograd.Function):
    """Line integrals (N,) of a stored volume along rays (N, 3) + (N, 3) in [tn, tf]; gradients for the rays only."""

    @staticmethod
    def forward(ctx, vol, src, d, tn, tf, renderer: str, step_voxels: float):
        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(torch.float32).contiguous()

        wants_grad = any(t.requires_grad for t in (src, d, tn, tf))
        out, partials = launch(vol, f32(src), f32(d), f32(tn), f32(tf), renderer, step_voxels, wants_grad)
        if partials is not None:
            ctx.save_for_backward(partials)
        return out.to(src.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (partials,) = ctx.saved_tensors
        scaled = partials * grad_out.to(partials.dtype)[:, None]
        dtype = grad_out.dtype
        return (None, scaled[:, 0:3].to(dtype), scaled[:, 3:6].to(dtype), scaled[:, 6].to(dtype),
                scaled[:, 7].to(dtype), None, None)


def integrate(mu: torch.Tensor, rays, renderer: str = "siddon", step_voxels: float = 1.0,
              volume_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Line integrals of mu (K, J, I) along a `RayBundle` -> (B, R), as the reference ``integrate`` functions.

    Differentiable w.r.t. the rays (hence pose and intrinsics), not w.r.t. mu.
    ``volume_dtype``: storage dtype the kernels read mu in (float32, float16,
    bfloat16; default mu's own); accumulation is float32 either way. The
    result has the dtype of the rays.
    """
    why = unavailable_reason(mu, mu.requires_grad and torch.is_grad_enabled())
    if why is not None:
        raise RuntimeError(f"the Triton renderer cannot run here: {why}")
    if mu.numel() >= 2**31:
        raise ValueError(f"the Triton renderer indexes volumes with int32: {tuple(mu.shape)} has too many voxels")
    if renderer == "trilinear" and not (step_voxels > 0):
        raise ValueError(f"step_voxels must be positive, got {step_voxels}")
    vol = storage(mu, volume_dtype)
    b, r = rays.direction.shape[:2]
    value = _TritonIntegral.apply(vol, *rays.flat(), renderer, step_voxels)
    return value.reshape(b, r) * rays.length_mm
