"""Trilinear ray marching with rays clipped to the volume box.

Each ray's clipped chord [t_near, t_far] is walked in steps that advance
exactly ``step_voxels`` voxels along the ray's dominant index axis (the step
is sized in voxels, not in source-to-detector length); mu is interpolated
trilinearly at each step's midpoint (midpoint rule). The chord rarely holds a
whole number of steps: the remainder is one shorter last step, sampled at its
own midpoint and weighted by its length. That makes the DRR a *continuous*
function of the pose and intrinsics (a pose-dependent sample count would make
it jump whenever a ray gains a step), so its gradient agrees with finite
differences. Rays are padded to the longest ray of the tile with zero-weight
samples, so a ray's value does not depend on how the detector is tiled.

Outside the outermost voxel centres (the last half voxel of the box) mu is
extended by its border value, so a uniform volume integrates exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .rays import RayBundle

# Bytes of working memory per sample (float32 positions, grid, values, weights,
# and what autograd saves for backward).
BYTES_PER_SAMPLE = 64


def max_samples_per_ray(shape_ijk, step_voxels: float) -> int:
    """Upper bound on samples per ray: the longest axis of the box over the step, plus the partial step."""
    return int(math.ceil(max(shape_ijk) / step_voxels)) + 2


def integrate(mu: torch.Tensor, rays: RayBundle, step_voxels: float = 1.0) -> torch.Tensor:
    """Line integrals of mu (K, J, I) along the rays -> (B, R)."""
    src, d, tn, tf = rays.source, rays.direction, rays.t_near, rays.t_far
    nk, nj, ni = mu.shape
    chord = tf - tn  # alpha units
    h = step_voxels / d.abs().amax(-1)  # alpha per step: step_voxels along the dominant axis, (B, R)
    with torch.no_grad():
        whole = torch.floor(chord / h)  # number of full steps
        most = int(whole.max()) + 1 if whole.numel() else 1
        k = torch.arange(most, dtype=d.dtype, device=d.device)
        is_full = k < whole[..., None]
        is_last = k == whole[..., None]
    rest = chord - whole * h  # length of the last, partial step (alpha units)
    # sample k: midpoint of full step k, or of the partial step; padding samples weigh 0
    offset = torch.where(is_full, (k + 0.5) * h[..., None], (whole * h + 0.5 * rest)[..., None])
    weight = torch.where(is_full, h[..., None], torch.where(is_last, rest[..., None], torch.zeros_like(offset)))
    # positions in grid_sample's [-1, 1] coordinates (i, j, k order)
    scale = torch.tensor([2.0 / (ni - 1), 2.0 / (nj - 1), 2.0 / (nk - 1)], dtype=d.dtype, device=d.device)
    start = (src + tn[..., None] * d) * scale - 1.0  # (B, R, 3)
    grid = torch.addcmul(start[..., None, :], offset[..., None], (d * scale)[..., None, :])  # (B, R, N, 3)
    b, r = tn.shape
    # PyTorch's CPU grid_sample for 3D inputs runs in parallel over the batch
    # dimension only: split the rays into chunks over a stride-0 expanded volume.
    total = b * r
    chunks = min(total, 4 * torch.get_num_threads()) if mu.device.type == "cpu" else 1
    per_chunk = -(-total // chunks)
    grid = grid.reshape(total, most, 1, 3)
    if per_chunk * chunks > total:
        grid = torch.cat([grid, grid.new_zeros(per_chunk * chunks - total, most, 1, 3)])
    sampled = F.grid_sample(
        mu[None, None].expand(chunks, 1, nk, nj, ni),
        grid.reshape(chunks, per_chunk, most, 1, 3),
        mode="bilinear", padding_mode="border", align_corners=True,
    ).reshape(-1, most)[:total].reshape(b, r, most)
    return (sampled * weight).sum(-1) * rays.length_mm
