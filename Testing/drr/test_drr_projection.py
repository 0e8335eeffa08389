"""A bright spot at a known RAS point appears in the DRR where K (R p + t) says.

The spot is a small Gaussian blob (sigma 0.8 voxel) so that its DRR is a few
pixels wide and its intensity-weighted centroid is a sub-pixel estimate of
where its centre projects. The expected pixel is computed by hand from the
pose matrix and the intrinsics written out explicitly, not with the engine's
`project`.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffRegLogic import Detector, Volume, render
from DiffRegLogic.volume.io import read_volume

from references import look_at_pose, oblique_affine


def blob_volume(shape_kji, affine: torch.Tensor, center_ijk, sigma_vox: float = 0.8) -> Volume:
    k, j, i = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape_kji], indexing="ij")
    ci, cj, ck = center_ijk
    r2 = (i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2
    return Volume(torch.exp(-0.5 * r2 / sigma_vox ** 2), affine)


def expected_pixel(point: np.ndarray, pose: torch.Tensor, sdd: float, row_mm: float, col_mm: float,
                   cx: float, cy: float) -> np.ndarray:
    """(u = column, v = row) of a world point, from the pinhole model written out by hand."""
    cam = pose[:3, :3].numpy() @ point + pose[:3, 3].numpy()
    return np.array([sdd / col_mm * cam[0] / cam[2] + cx, sdd / row_mm * cam[1] / cam[2] + cy])


def centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (u, v) of an (H, W) image."""
    v, u = np.mgrid[: image.shape[0], : image.shape[1]]
    w = image / image.sum()
    return np.array([(u * w).sum(), (v * w).sum()])


CASES = [
    # rows, cols, sdd, (row mm, col mm), principal point (cx, cy) or None, source offset direction
    (41, 41, 1000.0, (1.0, 1.0), None, (0.0, -1.0, 0.0)),
    (37, 53, 900.0, (1.4, 0.8), None, (0.3, -1.0, 0.2)),
    (45, 39, 1100.0, (0.9, 1.3), (21.5, 26.0), (-1.0, 0.2, 0.4)),
    (40, 40, 950.0, (1.2, 1.0), (15.0, 26.0), (0.5, 0.6, -1.0)),
]


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_bright_spot_projects_where_k_rp_t_says(renderer, case):
    rows, cols, sdd, (row_mm, col_mm), pp, offset = CASES[case]
    affine = oblique_affine(spacing=(0.9, 1.1, 1.0), origin=(-12.0, 9.0, -15.0))
    spot_ijk = (13.3, 9.6, 11.2)
    volume = blob_volume((24, 22, 26), affine, spot_ijk)
    spot = volume.index_to_world(torch.tensor(spot_ijk, dtype=torch.float64)).numpy()
    direction = np.asarray(offset) / np.linalg.norm(offset)
    # aim the principal ray 6 mm off the spot so the spot does not sit at the principal point
    pose = look_at_pose(spot - 500.0 * direction, spot + np.array([3.0, -2.0, 2.5]))
    detector = Detector(rows, cols, sdd, (row_mm, col_mm), pp)
    drr = render(volume, detector, pose, renderer, step_voxels=0.25)[0].numpy()
    cx = (cols - 1) / 2 if pp is None else pp[0]
    cy = (rows - 1) / 2 if pp is None else pp[1]
    want = expected_pixel(spot, pose, sdd, row_mm, col_mm, cx, cy)
    assert 10 < want[0] < cols - 11 and 10 < want[1] < rows - 11, "spot must be well inside the image"
    assert drr[[0, -1]].max() < 1e-3 * drr.max() and drr[:, [0, -1]].max() < 1e-3 * drr.max(), "spot cut off"
    np.testing.assert_allclose(centroid(drr), want, atol=0.05)


def test_bright_spot_through_an_oblique_lps_nifti_file(tmp_path):
    """Write a volume with SimpleITK (LPS, oblique direction), read it, and find the spot where ITK's
    own index->physical mapping (converted to RAS by flipping x and y) projects."""
    shape_kji = (26, 22, 24)
    ci, cj, ck = 12.4, 10.2, 13.7
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    hu = -1000.0 + 3000.0 * np.exp(-0.5 * ((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) / 0.8 ** 2)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    angle = np.deg2rad(25.0)
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.4), -np.sin(0.4)], [0, np.sin(0.4), np.cos(0.4)]])
    image.SetDirection(rot.reshape(-1).tolist())
    image.SetSpacing((1.1, 0.9, 1.3))
    image.SetOrigin((30.0, -20.0, 15.0))
    path = tmp_path / "spot.nii.gz"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint((ci, cj, ck)))
    spot = lps * np.array([-1.0, -1.0, 1.0])
    detector = Detector(41, 45, 1000.0, (1.1, 0.9), (20.0, 23.5))
    pose = look_at_pose(spot + np.array([200.0, -450.0, 80.0]), spot + np.array([2.0, 0.0, 1.0]))
    want = expected_pixel(spot, pose, 1000.0, 1.1, 0.9, 20.0, 23.5)
    assert 8 < want[0] < 45 - 9 and 8 < want[1] < 41 - 9, "spot must be well inside the image"
    for renderer in ("siddon", "trilinear"):
        drr = render(volume, detector, pose.float(), renderer, step_voxels=0.25)[0].double().numpy()
        # the blob sits on a zero background (air -> mu 0), so the centroid is the blob's
        assert drr[[0, -1]].max() < 1e-3 * drr.max() and drr[:, [0, -1]].max() < 1e-3 * drr.max()
        np.testing.assert_allclose(centroid(drr), want, atol=0.05)
