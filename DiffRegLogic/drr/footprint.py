"""The CT's footprint on the detector: the pixels whose rays cross the CT's box at a pose.

A truncated CT (a chest CT of 133 slices against an X-ray that also shows
the neck and the abdomen) explains only the pixels whose rays pass through
it; the other pixels hold anatomy the DRR cannot have, and a similarity
over the whole image is pulled by them. ``footprint_mask`` marks the pixels
to compare: 1 where the ray from the source to the pixel centre crosses the
CT's box [-0.5, n - 0.5]^3 in index space (the slab intersection of
`DiffRegLogic.drr.rays.clip_to_box`, over the ray's source-to-pixel segment)
for a path longer than ``min_path_mm``, else 0. The mask depends on the
pose, is exactly the support of the DRR of a volume of ones, and carries no
gradient (it is a set, not a smooth weight).

**Cut faces** (``exclude_cut_faces=True``, what registration uses): a CT
cropped along the body (only part of its S-I length scanned) has tissue on
the faces where it was cut, and the patient goes on beyond them. With a
cone beam, a ray that enters or leaves the box through such a face also
crossed anatomy the CT does not hold, so its pixel is not explained either;
those rays are left out too. A face is *cut* when more than
`CUT_FACE_FRACTION` of its voxels hold tissue (mu above `TISSUE_MU_PER_MM`,
about HU -500 at diagnostic energies); the faces of a CT surrounded by air
are not, so a CT that holds the whole patient keeps its full footprint.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.rigid import check_pose
from ..limits import check_number
from ..volume.ct import Volume
from .rays import detector_pixels, pixel_rays

TISSUE_MU_PER_MM = 0.01
"""A voxel holds tissue above this attenuation (1/mm): about half of water's from 40 to 120 keV, above air and
lung, below fat."""
CUT_FACE_FRACTION = 0.02
"""A face of the CT's box is cut (the patient goes on beyond it) when more than this fraction of its voxels hold
tissue."""
FACE_TOLERANCE = 1e-6
"""A ray enters or leaves through a face when its entry or exit point lies within this many voxels of it."""
DEFAULT_MIN_PATH_MM = 0.0
"""Shortest path through the CT's box (mm) for a pixel to count as covered (0: any ray that enters the box)."""


def cut_faces(volume: Volume) -> list[tuple[int, int]]:
    """The faces of the CT's box the patient goes on beyond: (index axis 0/1/2, side 0 = low / 1 = high) pairs."""
    mu = volume.mu.detach()  # (K, J, I): index axis a is tensor dimension 2 - a
    faces = []
    for axis in range(3):
        for side in (0, 1):
            face = mu.select(2 - axis, 0 if side == 0 else mu.shape[2 - axis] - 1)
            if float((face > TISSUE_MU_PER_MM).to(torch.float32).mean()) > CUT_FACE_FRACTION:
                faces.append((axis, side))
    return faces


def footprint_mask(volume: Volume, detector: Detector, poses: torch.Tensor,
                   min_path_mm: float = DEFAULT_MIN_PATH_MM, exclude_cut_faces: bool = False) -> torch.Tensor:
    """(B, H, W) 1 where the pixel's ray crosses the CT's box for more than ``min_path_mm`` mm, else 0.

    ``poses`` camera_from_world (4, 4) or (B, 4, 4) (mm); the result is in
    the dtype of ``volume.mu`` (float32 or float64; float64 for other
    dtypes) on its device, detached from the pose. ``exclude_cut_faces``:
    also 0 where the ray enters or leaves through a cut face (see the
    module docstring).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    min_path_mm = check_number("min_path_mm", min_path_mm, 0.0, None, unit="mm")
    dtype = volume.mu.dtype if volume.mu.dtype in (torch.float32, torch.float64) else torch.float64
    device = volume.mu.device
    with torch.no_grad():
        pose = check_pose(poses, name="poses").detach().to(device=device, dtype=torch.float64)
        pixels = detector_pixels(detector, torch.float64, device)
        rays = pixel_rays(volume, detector, pose, pixels, dtype=torch.float64)
        path_mm = (rays.t_far - rays.t_near) * rays.length_mm  # (B, R)
        covered = path_mm > min_path_mm
        faces = cut_faces(volume) if exclude_cut_faces else []
        if faces:
            n = volume.shape_ijk
            ends = [rays.source + t[..., None] * rays.direction for t in (rays.t_near, rays.t_far)]  # (B, R, 3)
            for axis, side in faces:
                bound = -0.5 if side == 0 else n[axis] - 0.5
                for point in ends:
                    covered &= (point[..., axis] - bound).abs() > FACE_TOLERANCE
    return covered.to(dtype).reshape(pose.shape[0], detector.rows, detector.cols)


def masked_by_footprint(mask: torch.Tensor | None, footprint: torch.Tensor) -> torch.Tensor:
    """A mask (H, W), (B, H, W) or None times a footprint (B, H, W): the (B, H, W) weights a similarity sees."""
    if mask is None:
        return footprint
    mask = mask.to(footprint.dtype)
    return (mask[None] if mask.dim() == 2 else mask) * footprint
