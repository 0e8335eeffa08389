"""Rays from the X-ray source to detector pixels, in the volume's index space.

Both renderers work in continuous voxel-index coordinates (i, j, k), where
voxel centres sit at integers and the volume occupies the box
[-0.5, n - 0.5] along each axis. The ijk->RAS affine maps straight lines to
straight lines and keeps the ray parameter alpha, so a ray
``x(alpha) = source + alpha * direction`` with alpha in [0, 1] from the source
(alpha = 0) to the pixel (alpha = 1) has the same alpha in world and index
space; a length in alpha times the ray's world length in mm is millimetres.
This makes oblique and anisotropic volumes free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.detector import Detector, backproject, pixel_grid
from ..volume.ct import Volume

# A direction component smaller than this (index units per unit alpha) is
# treated as parallel to the slab: its entry/exit parameters become huge.
_TINY = 1e-9


@dataclass
class RayBundle:
    """Rays of B poses through R pixels, in index space.

    source: (B, 1, 3) index coordinates of the source.
    direction: (B, R, 3) pixel minus source, index units per unit alpha.
    length_mm: (B, R) world length of each source->pixel ray (mm per unit alpha).
    t_near, t_far: (B, R) alpha where the ray enters and leaves the volume
        box, clipped to [0, 1]; t_far == t_near for rays that miss.
    """

    source: torch.Tensor
    direction: torch.Tensor
    length_mm: torch.Tensor
    t_near: torch.Tensor
    t_far: torch.Tensor

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source (N, 3), direction (N, 3), t_near (N,), t_far (N,)), one row per ray, N = B R: what the
        fused kernels take."""
        b, r, _ = self.direction.shape
        return (self.source.expand(b, r, 3).reshape(-1, 3), self.direction.reshape(-1, 3),
                self.t_near.reshape(-1), self.t_far.reshape(-1))


def pixel_rays(volume: Volume, detector: Detector, pose: torch.Tensor, pixels: torch.Tensor,
               dtype: torch.dtype | None = None) -> RayBundle:
    """Rays through ``pixels`` (R, 2) = (u, v) for poses (B, 4, 4).

    Computed in ``dtype`` (default: the dtype of ``volume.mu``); differentiable
    w.r.t. the pose and the detector's tensor-valued intrinsics.
    """
    dtype = volume.mu.dtype if dtype is None else dtype
    src_world, tgt_world = backproject(pixels.to(dtype), pose.to(dtype), detector)
    src_world = src_world[:, None]  # (B, 1, 3); tgt_world: (B, R, 3)
    inv = torch.linalg.inv(volume.affine).to(dtype)
    lin, off = inv[:3, :3], inv[:3, 3]
    src = src_world @ lin.T + off
    tgt = tgt_world @ lin.T + off
    direction = tgt - src
    length_mm = (tgt_world - src_world).norm(dim=-1)
    t_near, t_far = clip_to_box(src, direction, volume.shape_ijk)
    return RayBundle(src, direction, length_mm, t_near, t_far)


def clip_to_box(source: torch.Tensor, direction: torch.Tensor, shape_ijk) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab intersection of rays with the box [-0.5, n - 0.5]^3, clipped to alpha in [0, 1].

    source (B, 1, 3), direction (B, R, 3) -> t_near, t_far (B, R) with
    t_far >= t_near; equal for rays that miss the box.
    """
    n = torch.tensor(shape_ijk, dtype=source.dtype, device=source.device)
    safe = torch.where(direction.abs() < _TINY, torch.full_like(direction, _TINY), direction)
    t_lo = (-0.5 - source) / safe
    t_hi = (n - 0.5 - source) / safe
    t_enter = torch.minimum(t_lo, t_hi).amax(-1).clamp_min(0.0)
    t_exit = torch.maximum(t_lo, t_hi).amin(-1).clamp_max(1.0)
    t_exit = torch.maximum(t_exit, t_enter)
    return t_enter, t_exit


def detector_pixels(detector: Detector, dtype=torch.float64, device=None) -> torch.Tensor:
    """All pixel centres of the detector, (H*W, 2) row-major."""
    return pixel_grid(detector, dtype, device)
