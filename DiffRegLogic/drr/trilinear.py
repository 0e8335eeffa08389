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
        whole = torch.floor(chord / h)  # number of full steps per ray
        most = int(whole.max()) if whole.numel() else 0
        k = torch.arange(most, dtype=d.dtype, device=d.device)
        is_full = (k < whole[..., None]).to(d.dtype)  # padding samples of shorter rays count 0
    rest = chord - whole * h  # length of the last, partial step (alpha units)
    # positions in grid_sample's [-1, 1] coordinates (i, j, k order)
    scale = torch.tensor([2.0 / (ni - 1), 2.0 / (nj - 1), 2.0 / (nk - 1)], dtype=d.dtype, device=d.device)
    d_grid = d * scale
    start = (src + tn[..., None] * d) * scale - 1.0  # (B, R, 3): where the chord starts
    step = h[..., None] * d_grid  # (B, R, 3)
    # full step k: midpoint at start + (k + 1/2) step
    full = _sample(mu, torch.addcmul((start + 0.5 * step)[..., None, :], k[:, None], step[..., None, :]))
    # the partial last step, at its own midpoint
    last = _sample(mu, torch.addcmul(start, (whole * h + 0.5 * rest)[..., None], d_grid)[..., None, :])[..., 0]
    return (torch.linalg.vecdot(full, is_full) * h + last * rest) * rays.length_mm


def _sample(mu: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of mu (K, J, I) at grid (B, R, N, 3) in [-1, 1] (i, j, k order) -> (B, R, N).

    PyTorch's CPU grid_sample for 3D inputs runs in parallel over the batch
    dimension only, so the rays are split into chunks over a stride-0
    expanded volume.
    """
    b, r, n, _ = grid.shape
    if n == 0:
        return grid.new_zeros(b, r, 0)
    nk, nj, ni = mu.shape
    total = b * r
    chunks = min(total, 4 * torch.get_num_threads()) if mu.device.type == "cpu" else 1
    per_chunk = -(-total // chunks)
    grid = grid.reshape(total, n, 1, 3)
    if per_chunk * chunks > total:
        grid = torch.cat([grid, grid.new_zeros(per_chunk * chunks - total, n, 1, 3)])
    sampled = F.grid_sample(
        mu[None, None].expand(chunks, 1, nk, nj, ni),
        grid.reshape(chunks, per_chunk, n, 1, 3),
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    return sampled.reshape(-1, n)[:total].reshape(b, r, n)
