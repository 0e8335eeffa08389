"""Tests of DiffRegLogic.evaluation against closed forms and hand computations.

Expected values are computed independently of the module under test: rigid
motions are built in numpy (Rodrigues' formula), the pinhole model
``K (R p + t)`` and its back-projection are written out by hand, and the
summary statistics are worked out on paper.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from references import look_at_pose, oblique_affine
from DiffRegLogic import evaluation as ev
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.volume import Volume

SDD = 1000.0
DETECTOR = Detector(rows=120, cols=100, sdd=SDD, pixel_spacing=(0.45, 0.3), principal_point=(47.0, 61.5))


# --------------------------------------------------------------------------
# Independent numpy helpers
# --------------------------------------------------------------------------


def rodrigues(axis, angle):
    """Rotation matrix by ``angle`` (rad) about the unit vector ``axis`` (numpy)."""
    u = np.asarray(axis, dtype=float)
    u = u / np.linalg.norm(u)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def rigid(rot=np.eye(3), trans=(0.0, 0.0, 0.0)):
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = trans
    return m


def rotation_about_point(axis, angle, center):
    """World motion p -> c + R (p - c)."""
    r = rodrigues(axis, angle)
    c = np.asarray(center, dtype=float)
    return rigid(r, c - r @ c)


def camera_point_to_world(true, cam):
    """The world point that ``true`` (camera_from_world) puts at camera coordinates ``cam``."""
    return np.linalg.solve(true[:3, :3], np.asarray(cam, dtype=float) - true[:3, 3])


def perpendicular_basis(u):
    u = np.asarray(u, dtype=float) / np.linalg.norm(u)
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1)
    return u, e1, np.cross(u, e1)


def t(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


@pytest.fixture()
def true_pose():
    """An oblique C-arm view with the source 800 mm from a point near the world origin."""
    return look_at_pose(np.array([-300.0, -700.0, 250.0]), np.array([10.0, -5.0, 20.0])).numpy()


@pytest.fixture()
def cloud():
    """40 world points in a 100 mm cube around the origin (all in front of the source of `true_pose`)."""
    return np.random.default_rng(3).uniform(-50.0, 50.0, size=(40, 3))


def random_perturbations(true, count, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        motion = rigid(rodrigues(rng.normal(size=3), rng.uniform(0.01, 0.2)), rng.normal(scale=5.0, size=3))
        out.append(true @ motion)
    return np.stack(out)


# --------------------------------------------------------------------------
# mTRE
# --------------------------------------------------------------------------


def test_mtre_world_translation_gives_its_length(true_pose, cloud):
    d = np.array([3.0, -4.5, 1.2])
    est = true_pose @ rigid(trans=d)
    assert float(ev.mtre(t(est), t(true_pose), t(cloud))) == pytest.approx(np.linalg.norm(d), abs=1e-9)
    # the same shift applied in the camera frame
    est_cam = rigid(trans=d) @ true_pose
    assert float(ev.mtre(t(est_cam), t(true_pose), t(cloud))) == pytest.approx(np.linalg.norm(d), abs=1e-9)


def test_mtre_rotation_about_world_axis_is_chord_length(true_pose):
    axis, e1, e2 = perpendicular_basis([0.3, -0.8, 0.5])
    center = np.array([12.0, -7.0, 4.0])
    angle = math.radians(23.0)
    phis = np.linspace(0, 2 * math.pi, 13)[:-1]

    def circle(r, h):
        return np.stack([center + h * axis + r * (math.cos(p) * e1 + math.sin(p) * e2) for p in phis])

    est = true_pose @ rotation_about_point(axis, angle, center)
    on_circle = np.concatenate([circle(30.0, -10.0), circle(30.0, 25.0)])
    value = float(ev.mtre(t(est), t(true_pose), t(on_circle)))
    assert value == pytest.approx(2 * 30.0 * math.sin(angle / 2), abs=1e-9)
    # two radii: the mean of the two chords
    mixed = np.concatenate([circle(10.0, 0.0), circle(40.0, 5.0)])
    value = float(ev.mtre(t(est), t(true_pose), t(mixed)))
    assert value == pytest.approx(2 * 25.0 * math.sin(angle / 2), abs=1e-9)
    # points on the axis do not move
    on_axis = np.stack([center + h * axis for h in (-20.0, 0.0, 35.0)])
    assert float(ev.mtre(t(est), t(true_pose), t(on_axis))) == pytest.approx(0.0, abs=1e-10)


def test_identical_poses_give_exactly_zero(true_pose, cloud):
    poses = t(random_perturbations(true_pose, 3))
    assert torch.equal(ev.mtre(poses, poses, t(cloud)), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(ev.mrpd(poses, poses, t(cloud), DETECTOR), torch.zeros(3, dtype=torch.float64))
    assert float(ev.mpd(t(true_pose), t(true_pose), t(cloud), DETECTOR)) == 0.0
    assert torch.equal(ev.rotation_error_deg(poses, poses), torch.zeros(3, dtype=torch.float64))
    assert float(ev.translation_error_mm(poses[0], poses[0], [1.0, 2.0, 3.0])) == 0.0


def test_batch_equals_separate_calls(true_pose, cloud):
    est = random_perturbations(true_pose, 5, seed=1)
    center = [5.0, -3.0, 8.0]
    metrics = {
        "mtre": lambda e, tr: ev.mtre(e, tr, t(cloud)),
        "mpd": lambda e, tr: ev.mpd(e, tr, t(cloud), DETECTOR),
        "mrpd": lambda e, tr: ev.mrpd(e, tr, t(cloud), DETECTOR),
        "rotation": ev.rotation_error_deg,
        "translation": lambda e, tr: ev.translation_error_mm(e, tr, center),
    }
    for name, fn in metrics.items():
        batched = fn(t(est), t(true_pose))
        assert batched.shape == (5,), name
        singles = [fn(t(e), t(true_pose)) for e in est]
        assert all(s.shape == () for s in singles), name
        np.testing.assert_allclose(batched.numpy(), [float(s) for s in singles], rtol=1e-12, atol=1e-12, err_msg=name)
        # one true pose per estimate, and a (1, 4, 4) true pose, give the same
        per_pose = fn(t(est), t(np.stack([true_pose] * 5)))
        np.testing.assert_allclose(per_pose.numpy(), batched.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
        one = fn(t(est[:1]), t(true_pose))
        assert one.shape == (1,), name
    assert all(v > 0 for v in ev.mtre(t(est), t(true_pose), t(cloud)).tolist())


# --------------------------------------------------------------------------
# mPD
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [(4.0, 0.0), (0.0, -2.5), (3.0, 4.0)])
def test_mpd_parallel_shift_is_magnified_by_sdd_over_distance(true_pose, shift):
    s = 640.0
    points = np.stack([camera_point_to_world(true_pose, [x, y, s]) for x, y in [(0, 0), (-30, 12), (45, -20)]])
    est = rigid(trans=(shift[0], shift[1], 0.0)) @ true_pose  # world moved parallel to the detector
    expected = math.hypot(*shift) * SDD / s
    assert float(ev.mpd(t(est), t(true_pose), t(points), DETECTOR)) == pytest.approx(expected, rel=1e-10)


def test_mpd_shift_along_principal_ray_leaves_axis_point_fixed(true_pose):
    on_axis = camera_point_to_world(true_pose, [0.0, 0.0, 700.0])
    off_axis = camera_point_to_world(true_pose, [40.0, 0.0, 700.0])
    est = rigid(trans=(0.0, 0.0, 60.0)) @ true_pose
    assert float(ev.mpd(t(est), t(true_pose), t(on_axis[None]), DETECTOR)) == pytest.approx(0.0, abs=1e-9)
    # off the axis the magnification changes: 40 * SDD / 700 -> 40 * SDD / 760
    expected = 40.0 * SDD / 700.0 - 40.0 * SDD / 760.0
    assert float(ev.mpd(t(est), t(true_pose), t(off_axis[None]), DETECTOR)) == pytest.approx(expected, rel=1e-10)


def test_mpd_is_nan_when_the_estimate_puts_a_point_behind_the_source(true_pose):
    point = camera_point_to_world(true_pose, [0.0, 0.0, 300.0])
    est = rigid(trans=(0.0, 0.0, -400.0)) @ true_pose
    assert math.isnan(float(ev.mpd(t(est), t(true_pose), t(point[None]), DETECTOR)))
    with pytest.raises(InputError, match="behind"):
        ev.mpd(t(true_pose), t(est), t(point[None]), DETECTOR)


# --------------------------------------------------------------------------
# mRPD
# --------------------------------------------------------------------------


def test_mrpd_zero_for_shift_along_the_points_ray(true_pose):
    cam = np.array([35.0, -20.0, 650.0])
    point = camera_point_to_world(true_pose, cam)
    delta = 17.0
    est = rigid(trans=delta * cam / np.linalg.norm(cam)) @ true_pose
    assert float(ev.mrpd(t(est), t(true_pose), t(point[None]), DETECTOR)) == pytest.approx(0.0, abs=1e-9)
    assert float(ev.mtre(t(est), t(true_pose), t(point[None]))) == pytest.approx(delta, abs=1e-9)


def test_mrpd_lateral_shift_gives_perpendicular_distance(true_pose):
    # a point on the principal axis, moved by (a, 0, b): the line is the z axis, the distance |a|
    point = camera_point_to_world(true_pose, [0.0, 0.0, 700.0])
    est = rigid(trans=(6.0, 0.0, 8.0)) @ true_pose
    assert float(ev.mrpd(t(est), t(true_pose), t(point[None]), DETECTOR)) == pytest.approx(6.0, abs=1e-9)
    assert float(ev.mtre(t(est), t(true_pose), t(point[None]))) == pytest.approx(10.0, abs=1e-9)
    # off-axis point, generic shift: distance from c_t + d to the line through 0 and c_t
    cam = np.array([-60.0, 25.0, 720.0])
    d = np.array([3.0, -2.0, 5.0])
    point = camera_point_to_world(true_pose, cam)
    est = rigid(trans=d) @ true_pose
    u = cam / np.linalg.norm(cam)
    expected = np.linalg.norm(d - (d @ u) * u)
    assert float(ev.mrpd(t(est), t(true_pose), t(point[None]), DETECTOR)) == pytest.approx(expected, abs=1e-9)


def test_mrpd_matches_project_with_truth_backproject_with_estimate(true_pose, cloud):
    """van de Kraats' procedure written out: pixel from the true pose, ray from the estimate, distance to p."""
    k = np.array([[SDD / 0.3, 0.0, 47.0], [0.0, SDD / 0.45, 61.5], [0.0, 0.0, 1.0]])
    for est in random_perturbations(true_pose, 3, seed=7):
        distances = []
        for p in cloud:
            hom = k @ (true_pose[:3, :3] @ p + true_pose[:3, 3])
            pixel = hom / hom[2]
            source = -est[:3, :3].T @ est[:3, 3]
            direction = est[:3, :3].T @ np.linalg.solve(k, pixel)
            direction /= np.linalg.norm(direction)
            w = p - source
            distances.append(np.linalg.norm(w - (w @ direction) * direction))
        value = float(ev.mrpd(t(est), t(true_pose), t(cloud), DETECTOR))
        assert value == pytest.approx(np.mean(distances), rel=1e-9)
        assert value < float(ev.mtre(t(est), t(true_pose), t(cloud)))


# --------------------------------------------------------------------------
# Pose errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [30.0, 90.0, 179.9, 180.0, 1e-6])
def test_rotation_error_deg_known_angles(true_pose, degrees):
    rot = rodrigues([0.0, 0.0, 1.0], math.radians(degrees))
    est = rigid(rot) @ true_pose  # rotation about the camera z axis
    assert float(ev.rotation_error_deg(t(est), t(true_pose))) == pytest.approx(degrees, abs=1e-9)
    # about an oblique world axis through some point: the same angle
    est = true_pose @ rotation_about_point([0.2, -0.7, 0.4], math.radians(degrees), [30.0, 0.0, -5.0])
    assert float(ev.rotation_error_deg(t(est), t(true_pose))) == pytest.approx(degrees, abs=1e-9)
    # symmetric in est and true
    assert float(ev.rotation_error_deg(t(true_pose), t(est))) == pytest.approx(degrees, abs=1e-9)


def test_translation_error_closed_forms(true_pose):
    axis, e1, _ = perpendicular_basis([1.0, 2.0, -0.5])
    pivot = np.array([4.0, -6.0, 10.0])
    angle = math.radians(12.0)
    est = true_pose @ rotation_about_point(axis, angle, pivot)
    assert float(ev.translation_error_mm(t(est), t(true_pose), pivot)) == pytest.approx(0.0, abs=1e-10)
    assert float(ev.translation_error_mm(t(est), t(true_pose), pivot + 50.0 * e1 + 7.0 * axis)) == pytest.approx(
        2 * 50.0 * math.sin(angle / 2), abs=1e-9
    )
    d = np.array([2.0, 6.0, -3.0])
    est = true_pose @ rigid(trans=d)
    assert float(ev.translation_error_mm(t(est), t(true_pose), [100.0, -40.0, 9.0])) == pytest.approx(7.0, abs=1e-9)


def test_pose_errors_dict(true_pose):
    pivot = np.array([4.0, -6.0, 10.0])
    motion = rotation_about_point([0.0, 1.0, 0.0], math.radians(5.0), pivot) @ rigid(trans=(3.0, 0.0, 4.0))
    est = t(np.stack([true_pose @ motion, true_pose]))
    out = ev.pose_errors(est, t(true_pose), pivot, radius_mm=100.0)
    assert set(out) == {"rotation_deg", "translation_mm", "geodesic_mm"}
    np.testing.assert_allclose(out["rotation_deg"].numpy(), [5.0, 0.0], atol=1e-9)
    # the pivot first moves by (3, 0, 4) then rotates about itself: 5 mm
    np.testing.assert_allclose(out["translation_mm"].numpy(), [5.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(out["geodesic_mm"].numpy(), [math.hypot(100.0 * math.radians(5.0), 5.0), 0.0], atol=1e-9)
    assert set(ev.pose_errors(est, t(true_pose), pivot)) == {"rotation_deg", "translation_mm"}


# --------------------------------------------------------------------------
# Target points
# --------------------------------------------------------------------------


@pytest.fixture()
def ct():
    """A 14 x 12 x 10 volume with an oblique affine: noise-free air with a bright ellipsoid and a weak slab."""
    k, j, i = np.meshgrid(np.arange(10), np.arange(12), np.arange(14), indexing="ij")
    mu = np.zeros((10, 12, 14))
    mu[((i - 6.5) / 5) ** 2 + ((j - 5) / 4) ** 2 + ((k - 4.5) / 3.5) ** 2 <= 1] = 0.03
    mu[:, :2, :] = 0.001
    return Volume(torch.tensor(mu), oblique_affine())


def _indices(volume, points):
    inv = np.linalg.inv(volume.affine.numpy())
    return points @ inv[:3, :3].T + inv[:3, 3]


def test_target_points_are_voxel_centres_above_threshold(ct):
    mu = ct.mu.numpy()
    for threshold, n in [(None, 50), (0.0005, 70), (0.02, 10_000)]:
        pts = ev.target_points(ct, n=n, threshold=threshold, seed=4).numpy()
        level = mu.mean() if threshold is None else threshold
        candidates = int((mu > level).sum())
        assert pts.shape == (min(n, candidates), 3)
        ijk = _indices(ct, pts)
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-9)  # voxel centres
        idx = np.round(ijk).astype(int)
        assert (idx >= 0).all() and (idx < np.array([14, 12, 10])).all()  # inside the box
        assert (mu[idx[:, 2], idx[:, 1], idx[:, 0]] > level).all()
        assert len({tuple(v) for v in idx}) == len(idx)  # no repeats
    # n above the number of candidates: every candidate, once
    pts = ev.target_points(ct, n=10_000, threshold=0.02).numpy()
    idx = np.round(_indices(ct, pts)).astype(int)
    assert {tuple(v) for v in idx} == {(a, b, c) for c, b, a in zip(*np.nonzero(mu > 0.02))}
    # the default (mean) keeps the ellipsoid and drops the weak slab
    pts = ev.target_points(ct, n=10_000).numpy()
    idx = np.round(_indices(ct, pts)).astype(int)
    assert len(idx) == int((mu == 0.03).sum())


def test_target_points_deterministic_for_a_seed(ct):
    a = ev.target_points(ct, n=40, seed=11)
    b = ev.target_points(ct, n=40, seed=11)
    c = ev.target_points(ct, n=40, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_target_points_large_candidate_set_path(ct, monkeypatch):
    monkeypatch.setattr(ev, "_RANDPERM_LIMIT", 0)  # force the O(n)-memory sampler
    volume = Volume(torch.full((10, 12, 14), 0.02), oblique_affine())  # constant: every voxel qualifies
    pts = ev.target_points(volume, n=60, seed=2)
    assert pts.shape == (60, 3)
    idx = np.round(_indices(volume, pts.numpy())).astype(int)
    assert len({tuple(v) for v in idx}) == 60
    assert torch.equal(pts, ev.target_points(volume, n=60, seed=2))


def test_target_points_fallback_corners_and_centre():
    affine = oblique_affine()
    volume = Volume(torch.zeros(4, 5, 6, dtype=torch.float64), affine)
    pts = ev.target_points(volume).numpy()
    a = affine.numpy()
    expected = [a[:3, :3] @ np.array(v, dtype=float) + a[:3, 3] for v in
                [(i, j, k) for k in (0, 3) for j in (0, 4) for i in (0, 5)] + [(2.5, 2.0, 1.5)]]
    np.testing.assert_allclose(pts, np.array(expected), atol=1e-9)
    np.testing.assert_allclose(pts[-1], volume.center.numpy(), atol=1e-9)


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def test_success_rate_and_summarize_by_hand():
    errors = [0.5, 1.5, 3.0, float("nan"), 12.0]
    assert ev.success_rate(errors, 1.0) == pytest.approx(0.2)
    assert ev.success_rate(errors, 2.0) == pytest.approx(0.4)
    assert ev.success_rate(errors, 3.0) == pytest.approx(0.4)  # strictly below
    assert ev.success_rate(torch.tensor(errors), 20.0) == pytest.approx(0.8)  # the NaN fails
    summary = ev.summarize(errors)
    assert summary["n"] == 5 and summary["n_finite"] == 4
    assert summary["mean"] == pytest.approx(17.0 / 4)
    assert summary["median"] == pytest.approx(2.25)
    assert summary["p90"] == pytest.approx(3.0 + 0.7 * 9.0)  # rank 0.9 * 3 = 2.7 between 3 and 12
    assert summary["max"] == 12.0
    assert summary["success_rate"] == pytest.approx({"1": 0.2, "2": 0.4, "5": 0.6, "10": 0.6})
    assert all(type(summary[k]) is float for k in ("mean", "median", "p90", "max"))
    json.dumps(summary, allow_nan=False)  # JSON-ready
    nothing = ev.summarize([float("nan")] * 2, thresholds=(2.5,))
    assert nothing["mean"] is None and nothing["success_rate"] == {"2.5": 0.0}


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_bad_input_raises_input_error(true_pose, cloud, ct):
    good, pts = t(true_pose), t(cloud)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        ev.mtre(good, good, pts[:, :2])
    with pytest.raises(InputError, match="empty"):
        ev.mtre(good, good, torch.zeros(0, 3))
    with pytest.raises(InputError, match="NaN"):
        ev.mtre(good, good, torch.tensor([[0.0, float("nan"), 1.0]]))
    scaled = good.clone()
    scaled[:3, :3] *= 1.1
    with pytest.raises(InputError, match="rigid"):
        ev.mtre(scaled, good, pts)
    with pytest.raises(InputError, match="rigid"):
        ev.rotation_error_deg(good, scaled)
    with pytest.raises(InputError, match="batch"):
        ev.mtre(good.expand(3, 4, 4), good.expand(2, 4, 4), pts)
    with pytest.raises(InputError, match="Detector"):
        ev.mpd(good, good, pts, detector=(100, 100))
    with pytest.raises(InputError, match=r"\(3,\)"):
        ev.translation_error_mm(good, good, [1.0, 2.0])
    for threshold in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="positive"):
            ev.success_rate([1.0], threshold)
    with pytest.raises(InputError, match="positive"):
        ev.summarize([1.0, 2.0], thresholds=(1.0, 0.0))
    with pytest.raises(InputError, match="empty"):
        ev.summarize([])
    with pytest.raises(InputError, match="positive integer"):
        ev.target_points(ct, n=0)
    with pytest.raises(InputError, match="finite"):
        ev.target_points(ct, threshold=float("nan"))
    assert issubclass(InputError, ValueError)
