"""The Jacobian of a DRR with respect to pose parameters, for Gauss-Newton / Levenberg-Marquardt.

A DRR pixel depends on the pose only through its own ray. So the renderer is
run once with a *separate copy of the pose matrix per ray* (B, R, 4, 4),
each a leaf of the autograd graph: because pixel r depends only on copy r,
one reverse pass of the sum of all pixels gives, for every pixel, the
derivative of that pixel with respect to the 12 entries of the pose matrix.
Chained with ``d pose / d params`` (forward-mode autograd of the small
map from parameters to the 4x4 matrix), that is the whole (H*W) x P
Jacobian for the price of one gradient, instead of P forward-mode passes
through the renderer (the Siddon sort and the volume lookup do not support
forward mode) or H*W reverse passes.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..physics.materials import MaterialVolume
from ..volume.ct import Volume
from . import polychromatic
from .backends import (DEFAULT_MAX_MEMORY_MB, check_render_options, field_integrator, ray_dtype_for, rays_per_tile,
                       resolve_backend)
from .rays import RayBundle, clip_to_box, detector_pixels


def per_ray_rays(volume: Volume, detector: Detector, poses: torch.Tensor, pixels: torch.Tensor,
                 dtype: torch.dtype | None = None) -> RayBundle:
    """Rays of pixels (R, 2) = (u, v), each with its own pose: poses (B, R, 4, 4) -> a RayBundle with (B, R, .) fields.

    Written with broadcast products and sums rather than (B*R) tiny matrix
    products, whose backward is slow on the CPU.
    """
    dtype = volume.mu.dtype if dtype is None else dtype
    sdd, du, dv, cx, cy = detector.tensors(dtype, pixels.device)
    pixels = pixels.to(dtype)
    cam = torch.stack([(pixels[:, 0] - cx) * du, (pixels[:, 1] - cy) * dv, sdd.expand(pixels.shape[0])], -1)  # (R, 3)
    rotation, translation = poses[..., :3, :3], poses[..., :3, 3]
    # world = R^T (camera - t): sum over the camera axis k of R[k, i] (c - t)[k]
    src_world = -(rotation * translation[..., :, None]).sum(-2)
    tgt_world = (rotation * (cam - translation)[..., :, None]).sum(-2)
    inv = torch.linalg.inv(volume.affine).to(dtype)
    lin, off = inv[:3, :3], inv[:3, 3]
    src = src_world @ lin.T + off
    direction = (tgt_world - src_world) @ lin.T
    length_mm = (tgt_world - src_world).norm(dim=-1)
    t_near, t_far = clip_to_box(src, direction, volume.shape_ijk)
    return RayBundle(src, direction, length_mm, t_near, t_far)


def pose_jacobian(pose_of: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``pose_of(params)`` (B, 4, 4) and its derivative (B, 4, 4, P) with respect to params (B, P) (row b on row b)."""
    pose = pose_of(params)
    full = torch.func.jacfwd(pose_of)(params)  # (B, 4, 4, B, P)
    rows = torch.arange(params.shape[0], device=params.device)
    return pose, full[rows, :, :, rows, :]


def render_with_jacobian(
    volume: Volume,
    detector: Detector,
    pose_of: Callable[[torch.Tensor], torch.Tensor],
    params: torch.Tensor,
    renderer: str = "siddon",
    *,
    step_voxels: float = 1.0,
    max_memory_mb: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRRs and their Jacobians with respect to pose parameters.

    Args:
        volume, detector, renderer, step_voxels, backend: as for `render`.
        pose_of: differentiable map from parameters (B, P) to camera_from_world (B, 4, 4).
        params: (B, P) parameter values (each row one pose).
        max_memory_mb: working-memory budget per tile (default: the renderer's).

    Returns:
        ``drr`` (B, H, W) and ``jacobian`` (B, H, W, P) = d drr / d params,
        both detached, in the dtype of ``volume.mu`` (for a `MaterialVolume`:
        its polychromatic signal, chained through each channel's Jacobian).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    if not isinstance(params, torch.Tensor) or params.ndim != 2:
        raise InputError(f"params must be a (B, P) tensor, got {_shape_of(params)}")
    step_voxels, budget, _ = check_render_options(
        renderer, step_voxels, DEFAULT_MAX_MEMORY_MB if max_memory_mb is None else max_memory_mb, None,
        volume.shape_ijk)
    field = volume.densities if isinstance(volume, MaterialVolume) else volume.mu
    backend = resolve_backend(backend, field)
    integrate = field_integrator(renderer, step_voxels, backend, field)
    n_channels = field.shape[0] if field.ndim == 4 else 1
    dtype, device = volume.mu.dtype, volume.mu.device
    ray_dtype = ray_dtype_for(backend, volume.mu)  # as in render()
    params = params.detach().to(dtype=ray_dtype, device=device)
    n_poses, n_params = params.shape
    pose, d_pose = pose_jacobian(pose_of, params)
    pose, d_pose = pose.detach(), d_pose.detach()
    pixels = detector_pixels(detector, ray_dtype, device)
    tile = rays_per_tile(volume, n_poses * n_channels, renderer, step_voxels, budget, backend)
    values, jacobians = [], []
    mu = field.detach()
    for start in range(0, pixels.shape[0], tile):
        pix = pixels[start:start + tile]
        copies = pose[:, None].expand(n_poses, pix.shape[0], 4, 4).clone().requires_grad_(True)
        with torch.enable_grad():
            value = integrate(mu, per_ray_rays(volume, detector, copies, pix, ray_dtype))  # (B, R) or (B, R, C)
            channels = [value] if field.ndim == 3 else [value[..., c] for c in range(n_channels)]
            grads = [torch.autograd.grad(v.sum(), copies, retain_graph=c + 1 < len(channels))[0]
                     for c, v in enumerate(channels)]
        values.append(value.detach().to(dtype))
        jacobians.append(torch.stack([torch.einsum("brij,bijp->brp", g, d_pose) for g in grads], -2).to(dtype))
    drr = torch.cat(values, 1).reshape(n_poses, detector.rows, detector.cols, *values[0].shape[2:])
    jac = torch.cat(jacobians, 1).reshape(n_poses, detector.rows, detector.cols, *jacobians[0].shape[2:])
    if field.ndim == 3:
        jac = jac[..., 0, :]
    elif isinstance(volume, MaterialVolume):
        drr, jac = polychromatic.with_jacobian(volume, drr, jac)
    if not math.isfinite(float(jac.abs().sum())):
        raise FloatingPointError("the DRR Jacobian is not finite; check that the pose keeps the CT in front of the source")
    return drr, jac


def _shape_of(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
