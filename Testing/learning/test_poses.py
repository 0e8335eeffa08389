"""Pose sampling about a reference view (`DiffRegLogic.learning.poses`).

Truth: uniform sampling is checked by its moments and histogram against the
closed forms of a uniform law, and against `geometry.motions.random_motions`
(a separate implementation of the same draw); poses are rebuilt by hand with
scipy's rotation vectors; the reference view is checked by projecting the CT
centre (it lands on the principal point at depth sdd / 2) and by the source's
position in RAS (anterior of the centre for AP).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import demo_detector
from DiffRegLogic.geometry.carm import spherical_carm_to_pose
from DiffRegLogic.geometry.detector import project
from DiffRegLogic.geometry.motions import random_motions
from DiffRegLogic.learning.poses import (PoseRange, motions_from_poses, poses_from_motions, reference_view,
                                         sample_motions)
from DiffRegLogic.volume.phantoms import chest_phantom


@pytest.fixture(scope="module")
def volume():
    return chest_phantom(shape_ijk=(24, 22, 20), spacing=(14.0, 13.5, 14.5))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- PoseRange


def test_pose_range_defaults_scaling_and_dict_round_trip():
    r = PoseRange()
    assert r.rotation_deg == (45.0, 45.0, 45.0) and r.translation_mm == (60.0, 60.0, 60.0)
    assert PoseRange(30, 40) == PoseRange((30.0,) * 3, (40.0,) * 3)
    half = PoseRange((10, 20, 30), (1, 2, 3)).scaled(0.5)
    assert half.rotation_deg == (5.0, 10.0, 15.0) and half.translation_mm == (0.5, 1.0, 1.5)
    assert PoseRange(150, 1).scaled(2.0).rotation_deg == (180.0,) * 3  # capped at 180 deg
    d = PoseRange((10, 20, 30), (1, 2, 3)).to_dict()
    assert d == {"rotation_deg": [10.0, 20.0, 30.0], "translation_mm": [1.0, 2.0, 3.0]}
    assert PoseRange.from_dict(d) == PoseRange((10, 20, 30), (1, 2, 3))


@pytest.mark.parametrize("kwargs", [dict(rotation_deg=-1), dict(rotation_deg=(1, 2)), dict(translation_mm=math.nan),
                                    dict(rotation_deg=181), dict(translation_mm="60")])
def test_pose_range_refuses_bad_values(kwargs):
    with pytest.raises(InputError):
        PoseRange(**kwargs)


def test_pose_range_refuses_unknown_keys_and_bad_fractions():
    with pytest.raises(InputError, match="unknown"):
        PoseRange.from_dict({"rotation_deg": 10, "spin": 3})
    with pytest.raises(InputError):
        PoseRange().scaled(-0.5)


# ---------------------------------------------------------------------- sampling


def test_sample_motions_are_uniform_in_the_box_per_axis():
    r = PoseRange((10.0, 20.0, 40.0), (5.0, 50.0, 0.0))
    m = sample_motions(20000, r, _gen(3))
    assert m.shape == (20000, 6) and m.dtype == torch.float64
    half = torch.tensor([math.radians(10), math.radians(20), math.radians(40), 5.0, 50.0, 0.0], dtype=torch.float64)
    assert bool((m.abs() <= half).all())
    assert torch.equal(m[:, 5], torch.zeros(20000, dtype=torch.float64))  # a zero half-width fixes that axis
    n = m.shape[0]
    for axis in range(5):
        u = (m[:, axis] / half[axis]).numpy()  # uniform in [-1, 1]: mean 0 (sd 1/sqrt(3n)), variance 1/3
        assert abs(u.mean()) < 4 / math.sqrt(3 * n)
        assert abs(u.var() - 1 / 3) < 0.015
        counts, _ = np.histogram(u, bins=10, range=(-1, 1))
        chi2 = float(((counts - n / 10) ** 2 / (n / 10)).sum())
        assert chi2 < 30.0  # 9 degrees of freedom: P(chi2 > 30) ~ 4e-4
        assert u.min() < -0.99 and u.max() > 0.99  # the whole range is reached


def test_sample_motions_are_seeded_and_match_random_motions():
    r = PoseRange(45.0, 60.0)
    a, b = sample_motions(50, r, _gen(11)), sample_motions(50, r, _gen(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_motions(50, r, _gen(12)))
    torch.testing.assert_close(a, random_motions(50, 45.0, 60.0, seed=11), rtol=0, atol=1e-15)
    g = _gen(11)
    first, second = sample_motions(25, r, g), sample_motions(25, r, g)  # the generator advances
    assert torch.equal(torch.cat([first, second]), a)
    assert sample_motions(0, r, g).shape == (0, 6)
    with pytest.raises(InputError):
        sample_motions(5, r, 11)


# ---------------------------------------------------------------------- poses


def test_poses_from_motions_equal_hand_built_matrices_and_round_trip(volume):
    detector = demo_detector()
    ref = reference_view(volume, detector)
    center = torch.tensor([5.0, -12.0, 30.0], dtype=torch.float64)
    m = sample_motions(16, PoseRange(45.0, 60.0), _gen(5))
    poses = poses_from_motions(ref, m, center)
    assert poses.shape == (16, 4, 4) and poses.dtype == torch.float64
    c = center.numpy()
    for k in range(16):
        rot = Rotation.from_rotvec(m[k, :3].numpy()).as_matrix()
        motion = np.eye(4)
        motion[:3, :3] = rot
        motion[:3, 3] = c + m[k, 3:].numpy() - rot @ c  # p -> c + R (p - c) + t
        np.testing.assert_allclose(poses[k].numpy(), ref.numpy() @ motion, atol=1e-9)
    # the CT centre moves by t: its camera coordinates are those of c + t under the reference pose
    cam = (poses[:, :3, :3] @ center + poses[:, :3, 3])
    expected = (ref[:3, :3] @ (center + m[:, 3:]).T).T + ref[:3, 3]
    torch.testing.assert_close(cam, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(motions_from_poses(ref, poses, center), m, rtol=0, atol=1e-10)
    torch.testing.assert_close(poses_from_motions(ref, torch.zeros(1, 6, dtype=torch.float64), center)[0], ref)
    with pytest.raises(InputError):
        poses_from_motions(ref, torch.zeros(3, 5), center)


def test_reference_view_is_ap_through_the_ct_centre(volume):
    detector = demo_detector()
    center = volume.center.to(torch.float64)
    ref = reference_view(volume, detector)
    assert ref.shape == (4, 4) and ref.dtype == torch.float64
    pixel = project(center[None], ref, detector)[0]
    torch.testing.assert_close(pixel, torch.tensor([99.5, 99.5], dtype=torch.float64), rtol=0, atol=1e-9)
    depth = float(ref[2, :3] @ center + ref[2, 3])
    assert depth == pytest.approx(detector.sdd / 2, abs=1e-9)
    source = -(ref[:3, :3].T @ ref[:3, 3])  # RAS position of the X-ray source
    torch.testing.assert_close(source - center, torch.tensor([0.0, detector.sdd / 2, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-9)  # anterior (+A) of the centre: an AP view
    assert float(ref[1, :3] @ torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)) == pytest.approx(1.0)  # rows: feet
    spherical = spherical_carm_to_pose(torch.zeros(6, dtype=torch.float64), detector.sdd, center,
                                       radius=detector.sdd / 2)
    torch.testing.assert_close(ref, spherical, rtol=0, atol=1e-9)


def test_reference_view_distance_and_pa(volume):
    detector = demo_detector()
    center = volume.center.to(torch.float64)
    ref = reference_view(volume, detector, 600.0)
    assert float(ref[2, :3] @ center + ref[2, 3]) == pytest.approx(600.0, abs=1e-9)
    pa = reference_view(volume, detector, view="PA")
    source = -(pa[:3, :3].T @ pa[:3, 3])
    torch.testing.assert_close(source - center, torch.tensor([0.0, -detector.sdd / 2, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-9)
    for bad in (0.0, detector.sdd, -5.0, math.inf):
        with pytest.raises(InputError):
            reference_view(volume, detector, bad)
    with pytest.raises(InputError, match="view"):
        reference_view(volume, detector, view="lateral")
