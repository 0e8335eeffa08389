"""`footprint_mask`: the pixels whose rays cross the CT's box, against two independent truths.

* the support of the DRR of a volume of ones (a renderer's line integral is
  > 0 exactly where a ray crosses the box);
* the projection of the box: a ray from a point source outside a convex box
  hits it exactly when the pixel lies inside the convex hull of the 8
  projected corners (plane geometry, no ray clipping).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DiffRegLogic.drr import render
from DiffRegLogic.drr.footprint import footprint_mask, masked_by_footprint
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.volume.ct import Volume


def _box_volume(shape=(20, 16, 12), spacing=(4.0, 5.0, 6.0), origin=(-38.0, -37.5, -33.0)) -> Volume:
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return Volume(torch.ones(shape, dtype=torch.float64), affine)


def _pose(rx_deg: float, ry_deg: float, shift=(0.0, 0.0, 0.0), distance: float = 400.0) -> torch.Tensor:
    """camera_from_world: the world rotated about x then y, its origin ``distance`` mm along the camera z."""
    a, b = math.radians(rx_deg), math.radians(ry_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = ry @ rx
    pose[:3, 3] = torch.tensor(shift, dtype=torch.float64) + torch.tensor([0.0, 0.0, distance], dtype=torch.float64)
    return pose


DETECTOR = Detector(rows=40, cols=48, sdd=1000.0, pixel_spacing=(7.0, 6.0))
POSES = torch.stack([_pose(0, 0), _pose(25, -40, (30.0, -20.0, 50.0)), _pose(-60, 75, (-25.0, 15.0, -60.0))])


def _hull_truth(volume: Volume, detector: Detector, pose: torch.Tensor) -> np.ndarray:
    """(H, W) 1 inside the convex hull of the projected box corners, by half-planes of the hull's edges."""
    n = volume.shape_ijk
    corners_ijk = np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5)
                            for k in (-0.5, n[2] - 0.5)])
    affine = volume.affine.numpy()
    world = corners_ijk @ affine[:3, :3].T + affine[:3, 3]
    cam = world @ pose[:3, :3].numpy().T + pose[:3, 3].numpy()
    assert (cam[:, 2] > 0).all()  # the box is in front of the source
    # K of the design notes: pixel_spacing = (row dv, column du), principal point at the image centre
    K = np.array([[detector.sdd / detector.pixel_spacing[1], 0, (detector.cols - 1) / 2],
                  [0, detector.sdd / detector.pixel_spacing[0], (detector.rows - 1) / 2], [0, 0, 1]])
    uv = cam @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    # convex hull (monotone chain), counter-clockwise in (u, v)
    pts = sorted(map(tuple, uv))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    u, v = np.meshgrid(np.arange(detector.cols, dtype=np.float64), np.arange(detector.rows, dtype=np.float64))
    inside = np.ones_like(u, dtype=bool)
    for a, b in zip(hull, hull[1:] + hull[:1]):
        inside &= (b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0]) > 0
    return inside.astype(np.float64)


def test_the_footprint_is_the_support_of_the_drr_of_a_volume_of_ones():
    volume = _box_volume()
    mask = footprint_mask(volume, DETECTOR, POSES)
    drr = render(volume, DETECTOR, POSES, "siddon", backend="reference")
    assert mask.shape == (3, 40, 48) and mask.dtype == torch.float64
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask.numpy(), (drr > 0).double().numpy())
    for b in range(3):  # each pose sees part of the box and misses part of the detector
        assert 0 < int(mask[b].sum()) < 40 * 48


def test_the_footprint_is_the_projection_of_the_box():
    volume = _box_volume()
    mask = footprint_mask(volume, DETECTOR, POSES).numpy()
    for b in range(POSES.shape[0]):
        truth = _hull_truth(volume, DETECTOR, POSES[b])
        # pixel centres on a hull edge are a matter of rounding: at most a few along the outline differ
        assert np.abs(mask[b] - truth).sum() <= 2, (b, np.abs(mask[b] - truth).sum())
        assert truth.sum() > 50


def test_a_box_off_the_detector_has_an_empty_footprint_and_a_min_path_shrinks_it():
    volume = _box_volume()
    off = _pose(0, 0, (2000.0, 0.0, 0.0))
    assert float(footprint_mask(volume, DETECTOR, off).sum()) == 0.0
    full = footprint_mask(volume, DETECTOR, POSES[:1])
    drr = render(volume, DETECTOR, POSES[:1], "siddon", backend="reference")
    thick = footprint_mask(volume, DETECTOR, POSES[:1], min_path_mm=40.0)
    np.testing.assert_array_equal(thick.numpy(), (drr > 40.0).double().numpy())
    assert thick.sum() < full.sum()


def test_masked_by_footprint_multiplies_and_bad_inputs_are_refused():
    footprint = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[0.5, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(masked_by_footprint(mask, footprint), torch.tensor([[[0.5, 0.0], [0.0, 1.0]]]))
    assert masked_by_footprint(None, footprint) is footprint
    volume = _box_volume()
    with pytest.raises(InputError, match="min_path_mm"):
        footprint_mask(volume, DETECTOR, POSES, min_path_mm=-1.0)
    with pytest.raises(InputError, match="Volume"):
        footprint_mask(volume.mu, DETECTOR, POSES)
    with pytest.raises(InputError, match="Detector"):
        footprint_mask(volume, "detector", POSES)


def _cut_volume(cut_axis: int = 2) -> Volume:
    """The box with air on every face but the high face of ``cut_axis``, where tissue (mu 0.02/mm) is cut."""
    volume = _box_volume()
    mu = torch.zeros(volume.mu.shape, dtype=torch.float64)  # (K, J, I): index axis a is dimension 2 - a
    inner = [slice(1, n - 1) for n in mu.shape]
    inner[2 - cut_axis] = slice(1, None)
    mu[tuple(inner)] = 0.02
    return Volume(mu, volume.affine)


def _crosses_face(volume: Volume, detector: Detector, pose: torch.Tensor, axis: int, side: int) -> np.ndarray:
    """(H, W) whether the source-to-pixel segment crosses the face's rectangle: a plane intersection, no slabs."""
    from DiffRegLogic.drr.rays import detector_pixels
    from DiffRegLogic.geometry.detector import backproject

    src, tgt = backproject(detector_pixels(detector), pose[None], detector)
    inv = torch.linalg.inv(volume.affine)
    src = (src[:, None] @ inv[:3, :3].T + inv[:3, 3])[0].numpy()  # (1, 3) index space
    tgt = (tgt @ inv[:3, :3].T + inv[:3, 3])[0].numpy()  # (R, 3)
    n = volume.shape_ijk
    plane = -0.5 if side == 0 else n[axis] - 0.5
    t = (plane - src[:, axis]) / (tgt[:, axis] - src[:, axis])
    hit = src + t[:, None] * (tgt - src)
    others = [a for a in range(3) if a != axis]
    inside = np.all([(hit[:, a] >= -0.5) & (hit[:, a] <= n[a] - 0.5) for a in others], axis=0)
    return ((t >= 0) & (t <= 1) & inside).reshape(detector.rows, detector.cols)


def test_rays_through_a_cut_face_are_left_out():
    from DiffRegLogic.drr.footprint import cut_faces

    volume = _cut_volume(cut_axis=2)
    assert cut_faces(volume) == [(2, 1)]  # air on every other face
    left_out = 0
    for b in range(POSES.shape[0]):
        full = footprint_mask(volume, DETECTOR, POSES[b]).numpy()[0].astype(bool)
        kept = footprint_mask(volume, DETECTOR, POSES[b], exclude_cut_faces=True).numpy()[0].astype(bool)
        through = _crosses_face(volume, DETECTOR, POSES[b], 2, 1)
        # pixels whose ray grazes the face's outline are a matter of rounding
        assert (kept != (full & ~through)).sum() <= 2, b
        assert kept.sum() > 0
        left_out += int((full & through).sum())
    assert left_out > 50  # the poses do look through the cut face
    # a CT with air all round keeps its whole footprint
    closed = volume.mu.clone()
    closed[-1] = 0.0  # the k = last slice (dimension 0 of the (K, J, I) array)
    enclosed = Volume(closed, volume.affine)
    assert cut_faces(enclosed) == []
    np.testing.assert_array_equal(footprint_mask(enclosed, DETECTOR, POSES, exclude_cut_faces=True).numpy(),
                                  footprint_mask(enclosed, DETECTOR, POSES).numpy())
