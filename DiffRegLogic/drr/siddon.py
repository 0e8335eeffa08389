"""Exact radiological path (Siddon), vectorised over rays.

For each ray the parameters alpha at which it crosses the voxel-boundary
planes inside the volume are generated per axis (an arithmetic sequence
starting at the first plane after the entry point), merged with the entry and
exit parameters by one sort, and the DRR value is
``sum_k (alpha_{k+1} - alpha_k) * mu[voxel containing the segment midpoint]``
times the ray's length in mm. Only the planes a ray actually crosses inside
the volume are generated (padded to the tile's maximum), so memory is
rays x crossings, not rays x all planes.

Gradients w.r.t. the pose flow through the crossing parameters (the segment
lengths); the voxel lookup is piecewise constant, as in the seed paper.
Gradients w.r.t. mu flow through the gather.
"""

from __future__ import annotations

import torch

from .rays import RayBundle

# Bytes of working memory per generated crossing, forward + saved for backward
# (float32 alphas, sort indices, midpoints, indices, gathered values).
BYTES_PER_SAMPLE = 96


def max_samples_per_ray(shape_ijk) -> int:
    """Upper bound on crossings per ray: every plane of every axis plus entry and exit."""
    return int(sum(shape_ijk)) + 5


def integrate(mu: torch.Tensor, rays: RayBundle) -> torch.Tensor:
    """Line integrals of mu (K, J, I) along the rays -> (B, R), in mm * (1/mm).

    Voxel indices follow the ray incrementally (Jacobs): the voxel the ray
    enters, then +-1 along an axis at each crossing of that axis, so the
    lookup needs one cumulative sum instead of locating every midpoint.
    """
    src, d, tn, tf = rays.source, rays.direction, rays.t_near, rays.t_far
    nk, nj, ni = mu.shape
    shape_ijk = (ni, nj, nk)
    strides = (1, ni, ni * nj)
    index_dtype = torch.int32 if mu.numel() < 2**31 else torch.int64
    alphas = [tn[..., None]]
    deltas = [torch.zeros(tn.shape + (1,), dtype=index_dtype, device=mu.device)]
    entry = torch.zeros(tn.shape, dtype=index_dtype, device=mu.device)
    for axis in range(3):
        da, sa = d[..., axis], src[..., axis]
        with torch.no_grad():
            pin = sa + tn * da
            pout = sa + tf * da
            forward = da > 0
            # voxel the ray is in just after entering the box
            voxel = torch.where(forward, torch.floor(pin + 0.5), torch.ceil(pin + 0.5) - 1)
            voxel = voxel.clamp_(0, shape_ijk[axis] - 1)
            entry += voxel.to(index_dtype) * strides[axis]
            lo, hi = torch.minimum(pin, pout), torch.maximum(pin, pout)
            # planes at m - 0.5 strictly between entry and exit
            count = (torch.ceil(hi + 0.5) - 1 - torch.floor(lo + 0.5)).clamp_min(0)
            # a ray (nearly) parallel to this axis's planes crosses none of them (as clip_to_box treats it)
            count = torch.where(da.abs() < 1e-9, torch.zeros_like(count), count)
            most = int(count.max()) if count.numel() else 0
        if most == 0:
            continue
        with torch.no_grad():
            step = torch.where(forward, torch.ones_like(da), -torch.ones_like(da))
            k = torch.arange(most, dtype=d.dtype, device=d.device)
        # crossing k of this axis: plane voxel + step (k + 1/2), alpha = (plane - s) / d
        safe = torch.where(da.abs() < 1e-9, torch.full_like(da, 1e-9), da)
        first = (voxel + 0.5 * step - sa) / safe
        alpha = torch.addcmul(first[..., None], k, (step / safe)[..., None])
        with torch.no_grad():
            # only the first `count` crossings of each ray are real (rays that miss the box have none)
            valid = k < count[..., None]
            delta = torch.where(forward, strides[axis], -strides[axis]).to(index_dtype)
            deltas.append(valid.to(index_dtype) * delta[..., None])
        # crossings stay within [t_near, t_far]: rounding can put the first one a hair before the entry
        inside = torch.minimum(torch.maximum(alpha, tn[..., None]), tf[..., None])
        alphas.append(torch.where(valid, inside, tf[..., None]))
    alphas.append(tf[..., None])
    deltas.append(deltas[0])
    crossings = torch.cat(alphas, -1)
    if mu.requires_grad:
        # d/d mu wanted: differentiate the plain sum of segment lengths times mu.
        sorted_alphas, order = torch.sort(crossings, dim=-1)
        flat = _voxel_path(deltas, order, entry, mu.numel())
        seg = sorted_alphas[..., 1:] - sorted_alphas[..., :-1]
        return (seg * mu.reshape(-1)[flat]).sum(-1) * rays.length_mm
    with torch.no_grad():
        sorted_alphas, order = torch.sort(crossings.detach(), dim=-1)
        flat = _voxel_path(deltas, order, entry, mu.numel())
        values = mu.reshape(-1)[flat]
        seg = sorted_alphas[..., 1:] - sorted_alphas[..., :-1]
        integral = (seg * values).sum(-1)
    if not crossings.requires_grad:
        return integral * rays.length_mm
    # Gradient by summation by parts: sum_k (a_{k+1} - a_k) mu_k = sum_c a_c w_c with
    # w_c = mu(before c) - mu(after c), piecewise constant in the pose. Its
    # backward is a weighted sum, with no sort or gather to differentiate.
    with torch.no_grad():
        zero = torch.zeros_like(values[..., :1])
        jumps = torch.cat([zero, values], -1) - torch.cat([values, zero], -1)
        weights = torch.empty_like(jumps).scatter_(-1, order, jumps)
    surrogate = (crossings * weights).sum(-1)
    return (integral + (surrogate - surrogate.detach())) * rays.length_mm


def _voxel_path(deltas: list[torch.Tensor], order: torch.Tensor, entry: torch.Tensor, numel: int) -> torch.Tensor:
    """Flat voxel index of every segment between consecutive sorted crossings.

    The entry voxel plus the running sum of the +-stride steps of the
    crossings passed so far, in sorted order.
    """
    with torch.no_grad():
        steps = torch.gather(torch.cat(deltas, -1), -1, order[..., :-1])
        flat = torch.cumsum(steps, -1, dtype=entry.dtype).add_(entry[..., None]).clamp_(0, numel - 1)
        return flat.long() if flat.dtype != torch.int64 else flat
