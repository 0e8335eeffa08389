"""Tests of DiffRegLogic.geometry against hand-built matrices and closed forms.

Every expected value here is computed independently of the module under test:
rotations about the world axes, Rodrigues' formula, quaternion (Hamilton)
products and the pinhole model ``K (R p + t)`` are written out in numpy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from DiffRegLogic import geometry as g
from DiffRegLogic.errors import InputError

DT = torch.float64
EULER_CONVENTIONS = ["".join(p) for p in itertools.permutations("XYZ")]  # the six Tait-Bryan orders


# --------------------------------------------------------------------------
# Independent numpy helpers
# --------------------------------------------------------------------------


def rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


AXIS_ROT = {"X": rx, "Y": ry, "Z": rz}


def hat(w):
    return np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]], dtype=np.float64)


def rodrigues(omega):
    """Closed-form SO(3) exponential."""
    omega = np.asarray(omega, dtype=np.float64)
    theta = np.linalg.norm(omega)
    if theta == 0:
        return np.eye(3)
    k = hat(omega / theta)
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)


def se3_closed_form(xi):
    """Closed-form SE(3) exponential: [R | V v] with the left Jacobian V."""
    omega, v = np.asarray(xi[:3], dtype=np.float64), np.asarray(xi[3:], dtype=np.float64)
    theta = np.linalg.norm(omega)
    w = hat(omega)
    if theta < 1e-8:
        V = np.eye(3) + 0.5 * w + (w @ w) / 6.0
    else:
        V = np.eye(3) + (1 - math.cos(theta)) / theta**2 * w + (theta - math.sin(theta)) / theta**3 * (w @ w)
    m = np.eye(4)
    m[:3, :3] = rodrigues(omega)
    m[:3, 3] = V @ v
    return m


def quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def quat_rotation_matrix(q):
    """Rotation matrix of q = (w, x, y, z) built column by column from q (0, e_i) q*."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    conj = q * np.array([1, -1, -1, -1])
    cols = [quat_mul(quat_mul(q, np.r_[0.0, e]), conj)[1:] for e in np.eye(3)]
    return np.stack(cols, axis=1)


def random_rotation(rng):
    q = rng.normal(size=4)
    return quat_rotation_matrix(q / np.linalg.norm(q))


def rigid(rot, trans):
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = trans
    return m


def random_pose(rng, scale=200.0):
    return rigid(random_rotation(rng), rng.uniform(-scale, scale, size=3))


def T(x):
    return torch.as_tensor(np.asarray(x), dtype=DT)


def N(x):
    return x.detach().cpu().numpy()


def assert_rigid(pose, atol=1e-10):
    """R^T R = I, det R = +1, last row (0, 0, 0, 1), for a (..., 4, 4) array."""
    m = N(pose) if isinstance(pose, torch.Tensor) else np.asarray(pose)
    m = m.reshape(-1, 4, 4)
    rot = m[:, :3, :3]
    np.testing.assert_allclose(np.swapaxes(rot, -1, -2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=atol)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=atol)
    np.testing.assert_allclose(m[:, 3], np.broadcast_to([0, 0, 0, 1.0], (m.shape[0], 4)), atol=0)


def source_of(pose):
    """World position of the camera origin: inverse(pose) applied to 0, via numpy's generic inverse."""
    m = N(pose) if isinstance(pose, torch.Tensor) else np.asarray(pose)
    return (np.linalg.inv(m) @ np.array([0, 0, 0, 1.0]))[:3]


def principal_ray(pose):
    """World direction of the camera +z axis (third row of R)."""
    m = N(pose) if isinstance(pose, torch.Tensor) else np.asarray(pose)
    return m[:3, :3].T @ np.array([0, 0, 1.0])


def camera_axes(pose):
    """World directions of camera x, y, z (rows of R)."""
    m = N(pose) if isinstance(pose, torch.Tensor) else np.asarray(pose)
    return m[0, :3], m[1, :3], m[2, :3]


# --------------------------------------------------------------------------
# SE(3) exponential coordinates
# --------------------------------------------------------------------------

SMALL_ANGLES = [0.0, 1e-12, 1e-9, 1e-7, 1e-6, 2e-6, 1e-5, 1e-4, 2e-4, 1e-3, 1e-2]
NEAR_PI = [math.pi - 1e-1, math.pi - 1e-2, math.pi - 1.5e-3, math.pi - 1e-3, math.pi - 5e-4, math.pi - 1e-4, math.pi - 1e-6]


def test_se3_exp_matches_closed_form():
    rng = np.random.default_rng(0)
    xis = np.concatenate([rng.normal(size=(20, 3)), rng.uniform(-100, 100, size=(20, 3))], axis=1)
    out = N(g.se3_exp(T(xis)))
    assert out.shape == (20, 4, 4)
    for xi, m in zip(xis, out):
        np.testing.assert_allclose(m, se3_closed_form(xi), atol=1e-10)
    assert_rigid(out)


def test_se3_exp_of_pure_translation_and_pure_rotation():
    m = N(g.se3_exp(T([0, 0, 0, 1.5, -2.0, 3.0])))
    np.testing.assert_allclose(m, rigid(np.eye(3), [1.5, -2.0, 3.0]), atol=1e-14)
    m = N(g.se3_exp(T([0, 0, math.pi / 2, 0, 0, 0])))
    np.testing.assert_allclose(m, rigid(rz(math.pi / 2), [0, 0, 0]), atol=1e-14)


@pytest.mark.parametrize("angle", SMALL_ANGLES + NEAR_PI + [0.5, 1.0, 2.0, 3.0])
def test_se3_params_to_matrix_to_params(angle):
    rng = np.random.default_rng(int(angle * 1e6) % 2**31)
    axes = rng.normal(size=(8, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    v = rng.uniform(-50, 50, size=(8, 3))
    xi = np.concatenate([axes * angle, v], axis=1)
    m = g.se3_exp(T(xi))
    assert_rigid(m)
    for row, mm in zip(xi, N(m)):
        np.testing.assert_allclose(mm, se3_closed_form(row), atol=1e-9)
    back = N(g.se3_log(m))
    tol_rot = 1e-12 if angle < 3.0 else 1e-10
    np.testing.assert_allclose(back[:, :3], xi[:, :3], atol=tol_rot, rtol=1e-10)
    np.testing.assert_allclose(back[:, 3:], xi[:, 3:], atol=1e-9)


def test_se3_log_precision_near_small_angle_threshold():
    rng = np.random.default_rng(5)
    for angle in (1e-4, 2e-4, 5e-4, 1e-3):
        for _ in range(20):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            xi = np.r_[axis * angle, rng.uniform(-100, 100, 3)]
            back = N(g.se3_log(g.se3_exp(T(xi))))
            np.testing.assert_allclose(back, xi, atol=1e-9)


@pytest.mark.parametrize("angle", [2e-4, 1e-3, 3e-3])
def test_se3_log_float32_small_angles(angle):
    xi = np.r_[np.array([0.6, 0.0, 0.8]) * angle, 80.0, -60.0, 40.0]
    m = torch.as_tensor(se3_closed_form(xi), dtype=torch.float32)
    back = g.se3_log(m).double().numpy()
    assert np.isfinite(back).all()
    np.testing.assert_allclose(back[3:], xi[3:], atol=1e-2)  # float32 on ~100 mm: 1e-5 mm is achievable


@pytest.mark.parametrize("angle", SMALL_ANGLES + NEAR_PI + [math.pi])
def test_se3_matrix_to_params_to_matrix(angle):
    rng = np.random.default_rng(7)
    mats = []
    for _ in range(8):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        mats.append(rigid(rodrigues(axis * angle), rng.uniform(-100, 100, 3)))
    mats = np.stack(mats)
    xi = g.se3_log(T(mats))
    # the rotation angle is |omega| and lies in [0, pi]
    tol = 1e-9 if angle < 3.0 else 1e-10
    np.testing.assert_allclose(np.linalg.norm(N(xi[:, :3]), axis=1), angle, atol=tol)
    back = g.se3_exp(xi)
    np.testing.assert_allclose(N(back), mats, atol=tol)
    assert_rigid(back)


def test_se3_exact_half_turn_about_axes():
    """Rotations by exactly pi (where R - R^T vanishes) still log to a valid angle-pi vector."""
    for axis in np.eye(3).tolist() + [[1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], [1 / math.sqrt(3)] * 3]:
        axis = np.array(axis)
        m = rigid(rodrigues(axis * math.pi), [3.0, -4.0, 5.0])
        xi = N(g.se3_log(T(m)))
        assert abs(np.linalg.norm(xi[:3]) - math.pi) < 1e-7
        # axis recovered up to sign
        assert abs(abs(xi[:3] @ axis) - math.pi) < 1e-7
        np.testing.assert_allclose(N(g.se3_exp(T(xi))), m, atol=1e-7)


def test_so3_exp_log_consistent_with_rodrigues():
    rng = np.random.default_rng(3)
    omegas = rng.normal(size=(30, 3))
    omegas *= (rng.uniform(0, math.pi - 0.01, size=30) / np.linalg.norm(omegas, axis=1))[:, None]
    rot = N(g.so3_exp(T(omegas)))
    np.testing.assert_allclose(rot, np.stack([rodrigues(w) for w in omegas]), atol=1e-12)
    np.testing.assert_allclose(N(g.so3_log(T(rot))), omegas, atol=1e-9)


# --------------------------------------------------------------------------
# Euler angles
# --------------------------------------------------------------------------


@pytest.mark.parametrize("convention", EULER_CONVENTIONS)
def test_euler_to_matrix_is_product_of_axis_rotations(convention):
    rng = np.random.default_rng(11)
    angles = rng.uniform(-math.pi, math.pi, size=(10, 3))
    out = N(g.euler_to_matrix(T(angles), convention))
    for a, m in zip(angles, out):
        a_, b_, c_ = (AXIS_ROT[ax] for ax in convention)
        np.testing.assert_allclose(m, a_(a[0]) @ b_(a[1]) @ c_(a[2]), atol=1e-13)
    assert_rigid(g.make_rigid(T(out), torch.zeros(10, 3, dtype=DT)))


@pytest.mark.parametrize("convention", EULER_CONVENTIONS)
def test_euler_params_to_matrix_to_params(convention):
    rng = np.random.default_rng(12)
    n = 50
    angles = np.stack(
        [rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n), rng.uniform(-1.45, 1.45, n), rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n)],
        axis=1,
    )
    back = N(g.matrix_to_euler(g.euler_to_matrix(T(angles), convention), convention))
    np.testing.assert_allclose(back, angles, atol=1e-10)


@pytest.mark.parametrize("convention", EULER_CONVENTIONS)
def test_euler_matrix_to_params_to_matrix(convention):
    rng = np.random.default_rng(13)
    mats = np.stack([random_rotation(rng) for _ in range(60)])
    angles = g.matrix_to_euler(T(mats), convention)
    keep = np.abs(np.cos(N(angles[:, 1]))) > 0.05  # away from gimbal lock
    assert keep.sum() > 40
    assert (N(angles[:, 1]).__abs__() <= math.pi / 2 + 1e-12).all()
    back = N(g.euler_to_matrix(angles, convention))
    np.testing.assert_allclose(back[keep], mats[keep], atol=1e-10)


@pytest.mark.parametrize("convention", ["ZXZ", "XX", "ABC", "XYZX", "xyz"])
def test_euler_unsupported_convention_raises(convention):
    with pytest.raises(InputError, match="not supported"):
        g.euler_to_matrix(torch.zeros(3, dtype=DT), convention)
    with pytest.raises(InputError, match="not supported"):
        g.matrix_to_euler(torch.eye(3, dtype=DT), convention)


# --------------------------------------------------------------------------
# Quaternions
# --------------------------------------------------------------------------


def test_quaternion_to_matrix_matches_hamilton_product():
    rng = np.random.default_rng(21)
    qs = rng.normal(size=(40, 4)) * rng.uniform(0.2, 5, size=(40, 1))  # not normalised on purpose
    out = N(g.quaternion_to_matrix(T(qs)))
    for q, m in zip(qs, out):
        np.testing.assert_allclose(m, quat_rotation_matrix(q), atol=1e-12)
    np.testing.assert_allclose(out, N(g.quaternion_to_matrix(T(-qs))), atol=1e-14)  # q and -q
    assert_rigid(g.make_rigid(T(out), torch.zeros(40, 3, dtype=DT)))


def test_quaternion_known_values():
    # 90 degrees about z: q = (cos 45, 0, 0, sin 45)
    q = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]
    np.testing.assert_allclose(N(g.quaternion_to_matrix(T(q))), rz(math.pi / 2), atol=1e-15)
    np.testing.assert_allclose(N(g.quaternion_to_matrix(T([1.0, 0, 0, 0]))), np.eye(3), atol=0)


def test_quaternion_roundtrips():
    rng = np.random.default_rng(22)
    qs = rng.normal(size=(100, 4))
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    qs[qs[:, 0] < 0] *= -1
    back = N(g.matrix_to_quaternion(g.quaternion_to_matrix(T(qs))))
    np.testing.assert_allclose(back, qs, atol=1e-12)
    mats = np.stack([random_rotation(rng) for _ in range(100)])
    q = g.matrix_to_quaternion(T(mats))
    assert (N(q[:, 0]) >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(N(q), axis=1), 1.0, atol=1e-14)
    np.testing.assert_allclose(N(g.quaternion_to_matrix(q)), mats, atol=1e-12)


@pytest.mark.parametrize(
    "q",
    [
        [1, 0, 0, 0],  # identity (trace branch)
        [0, 1, 0, 0],  # half turns: w = 0, each of the other three branches
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [0, 1, 1, 0],
        [1e-5, 0.3, -0.9, 0.2],
        [0.05, -0.2, 0.1, 0.97],
    ],
)
def test_quaternion_every_shepperd_branch(q):
    q = np.asarray(q, dtype=np.float64)
    q /= np.linalg.norm(q)
    m = quat_rotation_matrix(q)
    back = N(g.matrix_to_quaternion(T(m)))
    # equal up to sign
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-12
    np.testing.assert_allclose(N(g.quaternion_to_matrix(T(back))), m, atol=1e-12)


# --------------------------------------------------------------------------
# Motions about a centre
# --------------------------------------------------------------------------


def test_motion_about_center_fixes_center_and_matches_formula():
    rng = np.random.default_rng(31)
    c = rng.uniform(-100, 100, 3)
    rot = random_rotation(rng)
    t = rng.uniform(-20, 20, 3)
    m = N(g.motion_about_center(T(rot), T(t), T(c)))
    assert_rigid(m)
    pts = rng.uniform(-200, 200, size=(10, 3))
    mapped = (m[:3, :3] @ pts.T).T + m[:3, 3]
    np.testing.assert_allclose(mapped, c + (rot @ (pts - c).T).T + t, atol=1e-10)
    # pure rotation about c fixes c
    m0 = N(g.motion_about_center(T(rot), torch.zeros(3, dtype=DT), T(c)))
    np.testing.assert_allclose(m0[:3, :3] @ c + m0[:3, 3], c, atol=1e-10)
    assert np.abs(m0[:3, 3]).max() > 1.0  # not trivially the identity translation
    # inverse
    r_back, t_back = g.motion_about_center_params(T(m), T(c))
    np.testing.assert_allclose(N(r_back), rot, atol=1e-12)
    np.testing.assert_allclose(N(t_back), t, atol=1e-10)


def test_about_center_is_conjugation():
    rng = np.random.default_rng(32)
    motion = random_pose(rng, 30)
    c = rng.uniform(-50, 50, 3)
    expected = rigid(np.eye(3), c) @ motion @ rigid(np.eye(3), -c)
    np.testing.assert_allclose(N(g.about_center(T(motion), T(c))), expected, atol=1e-12)


def test_pose_from_se3_about_roundtrip_and_fixed_center():
    rng = np.random.default_rng(33)
    ref = random_pose(rng, 500)
    c = rng.uniform(-100, 100, 3)
    # xi = 0 gives the reference
    np.testing.assert_allclose(N(g.pose_from_se3_about(T(ref), torch.zeros(6, dtype=DT), T(c))), ref, atol=1e-12)
    for _ in range(10):
        omega = rng.normal(size=3)
        omega *= rng.uniform(0, 3.0) / np.linalg.norm(omega)
        xi = np.r_[omega, rng.uniform(-50, 50, 3)]
        pose = g.pose_from_se3_about(T(ref), T(xi), T(c))
        assert_rigid(pose)
        expected = ref @ rigid(np.eye(3), c) @ se3_closed_form(xi) @ rigid(np.eye(3), -c)
        np.testing.assert_allclose(N(pose), expected, atol=1e-9)
        np.testing.assert_allclose(N(g.se3_about_from_pose(T(ref), pose, T(c))), xi, atol=1e-9)
        # a pure rotation about c leaves c where the reference put it (in camera coordinates)
        rot_only = g.pose_from_se3_about(T(ref), T(np.r_[omega, 0, 0, 0]), T(c))
        cam_c = N(rot_only)[:3, :3] @ c + N(rot_only)[:3, 3]
        np.testing.assert_allclose(cam_c, ref[:3, :3] @ c + ref[:3, 3], atol=1e-9)


def test_batched_pose_from_se3_about():
    rng = np.random.default_rng(34)
    ref = random_pose(rng)
    c = rng.uniform(-10, 10, 3)
    xi = rng.normal(size=(5, 6))
    out = N(g.pose_from_se3_about(T(ref), T(xi), T(c)))
    assert out.shape == (5, 4, 4)
    for x, m in zip(xi, out):
        np.testing.assert_allclose(m, ref @ rigid(np.eye(3), c) @ se3_closed_form(x) @ rigid(np.eye(3), -c), atol=1e-9)


def test_invert_rigid_and_make_rigid():
    rng = np.random.default_rng(35)
    mats = np.stack([random_pose(rng) for _ in range(5)])
    np.testing.assert_allclose(N(g.invert_rigid(T(mats))), np.linalg.inv(mats), atol=1e-10)
    np.testing.assert_allclose(N(g.make_rigid(T(mats[:, :3, :3]), T(mats[:, :3, 3]))), mats, atol=0)


# --------------------------------------------------------------------------
# Spherical C-arm model
# --------------------------------------------------------------------------

AP_WORLD_FROM_CAMERA = np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=np.float64).T  # columns x, y, z in RAS


def test_spherical_zero_angles_is_ap_view():
    sdd = 1000.0
    center = np.array([10.0, -20.0, 30.0])
    b = np.array([1.0, 2.0, 3.0])
    pose = N(g.spherical_carm_to_pose(T(np.r_[0, 0, 0, b]), sdd, center=T(center)))
    assert_rigid(pose)
    iso = center + b
    # AP: source anterior (+A) of the isocentre at rho = sdd / 2, beam towards posterior
    np.testing.assert_allclose(source_of(pose), iso + np.array([0, sdd / 2, 0]), atol=1e-10)
    x, y, z = camera_axes(pose)
    np.testing.assert_allclose(z, [0, -1, 0], atol=1e-15)  # principal ray towards posterior
    np.testing.assert_allclose(y, [0, 0, -1], atol=1e-15)  # rows towards the feet
    np.testing.assert_allclose(x, [-1, 0, 0], atol=1e-15)  # columns towards the patient's left
    # isocentre on the principal ray at depth rho
    np.testing.assert_allclose(pose[:3, :3] @ iso + pose[:3, 3], [0, 0, sdd / 2], atol=1e-10)


@pytest.mark.parametrize("radius", [None, 300.0])
def test_spherical_source_on_sphere_and_closed_form_axes(radius):
    rng = np.random.default_rng(41)
    sdd = 1020.0
    rho = sdd / 2 if radius is None else radius
    center = rng.uniform(-50, 50, 3)
    for _ in range(20):
        theta, gamma = rng.uniform(-math.pi, math.pi, 2)
        phi = rng.uniform(-1.4, 1.4)
        b = rng.uniform(-30, 30, 3)
        pose = N(g.spherical_carm_to_pose(T(np.r_[theta, phi, gamma, b]), sdd, center=T(center), radius=radius))
        assert_rigid(pose)
        iso = center + b
        src = source_of(pose)
        assert abs(np.linalg.norm(src - iso) - rho) < 1e-9
        # isocentre on the principal ray at depth rho
        np.testing.assert_allclose(pose[:3, :3] @ iso + pose[:3, 3], [0, 0, rho], atol=1e-9)
        # W = Rz(theta) Rx(phi) W_AP Rz(gamma), built by hand
        w = rz(theta) @ rx(phi) @ AP_WORLD_FROM_CAMERA @ rz(gamma)
        np.testing.assert_allclose(pose[:3, :3], w.T, atol=1e-12)
        # principal ray in closed form, independent of gamma
        z = principal_ray(pose)
        np.testing.assert_allclose(
            z, [math.sin(theta) * math.cos(phi), -math.cos(theta) * math.cos(phi), -math.sin(phi)], atol=1e-12
        )


def test_spherical_theta_rotates_about_superior_axis():
    """theta = 90 deg turns the AP beam (towards -A) into a beam towards +R."""
    pose = N(g.spherical_carm_to_pose(T([math.pi / 2, 0, 0, 0, 0, 0]), 1000.0))
    np.testing.assert_allclose(principal_ray(pose), [1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(source_of(pose), [-500, 0, 0], atol=1e-10)
    # phi = 90 deg tilts the beam to -S (source above the head)
    pose = N(g.spherical_carm_to_pose(T([0, math.pi / 2, 0, 0, 0, 0]), 1000.0))
    np.testing.assert_allclose(principal_ray(pose), [0, 0, -1], atol=1e-15)


def test_spherical_gamma_rolls_about_principal_ray():
    base = N(g.spherical_carm_to_pose(T([0.3, 0.2, 0.0, 1, 2, 3]), 900.0))
    rolled = N(g.spherical_carm_to_pose(T([0.3, 0.2, 0.4, 1, 2, 3]), 900.0))
    np.testing.assert_allclose(principal_ray(rolled), principal_ray(base), atol=1e-14)
    np.testing.assert_allclose(source_of(rolled), source_of(base), atol=1e-10)
    x0, _, _ = camera_axes(base)
    x1, _, _ = camera_axes(rolled)
    assert abs(x0 @ x1 - math.cos(0.4)) < 1e-12


@pytest.mark.parametrize("radius", [None, 450.0])
def test_spherical_roundtrips(radius):
    rng = np.random.default_rng(42)
    sdd = 1100.0
    center = T(rng.uniform(-50, 50, 3))
    n = 40
    params = np.stack(
        [rng.uniform(-3.1, 3.1, n), rng.uniform(-1.4, 1.4, n), rng.uniform(-3.1, 3.1, n)]
        + [rng.uniform(-80, 80, n) for _ in range(3)],
        axis=1,
    )
    pose = g.spherical_carm_to_pose(T(params), sdd, center=center, radius=radius)
    assert pose.shape == (n, 4, 4)
    assert_rigid(pose)
    np.testing.assert_allclose(N(g.pose_to_spherical_carm(pose, sdd, center=center, radius=radius)), params, atol=1e-9)
    # matrix -> params -> matrix for arbitrary rigid poses
    mats = np.stack([random_pose(rng, 600) for _ in range(n)])
    p = g.pose_to_spherical_carm(T(mats), sdd, center=center, radius=radius)
    np.testing.assert_allclose(N(g.spherical_carm_to_pose(p, sdd, center=center, radius=radius)), mats, atol=1e-9)


# --------------------------------------------------------------------------
# Clinical C-arm angles
# --------------------------------------------------------------------------


def test_clinical_zero_is_pa():
    iso = np.array([5.0, -7.0, 11.0])
    d = 750.0
    pose = N(g.clinical_to_pose(0.0, 0.0, d, isocenter=T(iso)))
    assert_rigid(pose)
    x, y, z = camera_axes(pose)
    np.testing.assert_allclose(z, [0, 1, 0], atol=1e-15)  # beam posterior -> anterior (detector anterior)
    np.testing.assert_allclose(y, [0, 0, -1], atol=1e-15)  # rows towards the feet
    np.testing.assert_allclose(x, [1, 0, 0], atol=1e-15)  # right-handed camera: columns towards the patient's right
    np.testing.assert_allclose(source_of(pose), iso - d * np.array([0, 1, 0]), atol=1e-10)  # source posterior


@pytest.mark.parametrize(
    "primary, secondary, beam",
    [
        (90.0, 0.0, [-1, 0, 0]),  # LAO 90: detector at the patient's left, beam R -> L
        (-90.0, 0.0, [1, 0, 0]),  # RAO 90: detector at the patient's right
        (0.0, 90.0, [0, 0, 1]),  # CRA 90: detector towards the head
        (0.0, -90.0, [0, 0, -1]),  # CAU 90: detector towards the feet
        (180.0, 0.0, [0, -1, 0]),  # AP (source anterior)
        (30.0, 0.0, [-0.5, math.sqrt(3) / 2, 0]),  # LAO 30: detector anterior-left
        (-45.0, 0.0, [math.sqrt(0.5), math.sqrt(0.5), 0]),  # RAO 45: detector anterior-right
        (0.0, 30.0, [0, math.sqrt(3) / 2, 0.5]),  # CRA 30: detector anterior-superior
        (0.0, -30.0, [0, math.sqrt(3) / 2, -0.5]),  # CAU 30
    ],
)
def test_clinical_principal_ray_directions(primary, secondary, beam):
    d = 800.0
    pose = N(g.clinical_to_pose(primary, secondary, d))
    assert_rigid(pose)
    z = principal_ray(pose)
    np.testing.assert_allclose(z, beam, atol=1e-14)
    np.testing.assert_allclose(source_of(pose), -d * np.asarray(beam), atol=1e-10)
    # isocentre on the principal ray, at depth d
    np.testing.assert_allclose(pose[:3, 3], [0, 0, d], atol=1e-10)


def test_clinical_lao_moves_source_to_right_posterior():
    pose = N(g.clinical_to_pose(40.0, 0.0, 700.0))
    src = source_of(pose)
    assert src[0] > 100 and src[1] < -100 and abs(src[2]) < 1e-9  # right (+R) and posterior (-A)
    pose = N(g.clinical_to_pose(-40.0, 0.0, 700.0))  # RAO: source left-posterior
    src = source_of(pose)
    assert src[0] < -100 and src[1] < -100
    pose = N(g.clinical_to_pose(0.0, 25.0, 700.0))  # CRA: source towards the feet
    assert source_of(pose)[2] < -100


def test_clinical_no_roll_rows_towards_feet():
    """Rows point along the projection of -S onto the detector plane (as close to the feet as possible)."""
    rng = np.random.default_rng(51)
    for _ in range(20):
        p, s = rng.uniform(-170, 170), rng.uniform(-80, 80)
        pose = N(g.clinical_to_pose(p, s, 900.0))
        x, y, z = camera_axes(pose)
        feet = np.array([0, 0, -1.0])
        expected_y = feet - (feet @ z) * z
        expected_y /= np.linalg.norm(expected_y)
        np.testing.assert_allclose(y, expected_y, atol=1e-12)
        np.testing.assert_allclose(x, np.cross(y, z), atol=1e-12)
        # principal ray in closed form
        pr, sr = math.radians(p), math.radians(s)
        np.testing.assert_allclose(z, [-math.sin(pr) * math.cos(sr), math.cos(pr) * math.cos(sr), math.sin(sr)], atol=1e-12)


def test_clinical_roundtrips():
    rng = np.random.default_rng(52)
    n = 30
    prim = rng.uniform(-179, 179, n)
    sec = rng.uniform(-85, 85, n)
    dist = rng.uniform(400, 1000, n)
    iso = rng.uniform(-40, 40, 3)
    pose = g.clinical_to_pose(T(prim), T(sec), T(dist), isocenter=T(iso))
    assert pose.shape == (n, 4, 4)
    assert_rigid(pose)
    p2, s2, d2 = g.pose_to_clinical(pose, isocenter=T(iso))
    np.testing.assert_allclose(N(p2), prim, atol=1e-9)
    np.testing.assert_allclose(N(s2), sec, atol=1e-9)
    np.testing.assert_allclose(N(d2), dist, atol=1e-9)
    # matrix -> params -> matrix
    np.testing.assert_allclose(N(g.clinical_to_pose(p2, s2, d2, isocenter=T(iso))), N(pose), atol=1e-9)


def test_pose_to_clinical_ignores_roll_and_projects_offray_isocenter():
    pose = N(g.clinical_to_pose(25.0, -15.0, 600.0))
    rolled = rigid(rz(0.7), [0, 0, 0]) @ pose  # roll about the camera z axis
    p, s, d = (float(v) for v in g.pose_to_clinical(T(rolled)))
    assert abs(p - 25.0) < 1e-9 and abs(s + 15.0) < 1e-9 and abs(d - 600.0) < 1e-9
    # an isocentre off the ray: distance is measured to its foot on the ray
    z = principal_ray(pose)
    perp = np.cross(z, [0, 0, 1.0])
    perp /= np.linalg.norm(perp)
    off = 37.0 * z + 55.0 * perp
    _, _, d = g.pose_to_clinical(T(pose), isocenter=T(off))
    assert abs(float(d) - 637.0) < 1e-9


# --------------------------------------------------------------------------
# Detector and intrinsics
# --------------------------------------------------------------------------


def test_intrinsics_match_design_formula():
    det = g.Detector(rows=300, cols=200, sdd=1000.0, pixel_spacing=(0.5, 0.25))  # (row dv, column du)
    k = N(det.intrinsics())
    expected = np.array([[1000.0 / 0.25, 0, (200 - 1) / 2], [0, 1000.0 / 0.5, (300 - 1) / 2], [0, 0, 1]])
    np.testing.assert_allclose(k, expected, rtol=1e-15)
    sdd, du, dv, cx, cy = (float(v) for v in det.tensors())
    assert (sdd, du, dv, cx, cy) == (1000.0, 0.25, 0.5, 99.5, 149.5)
    assert det.shape == (300, 200)


def test_intrinsics_explicit_principal_point():
    det = g.Detector(rows=64, cols=80, sdd=900.0, pixel_spacing=(0.4, 0.3), principal_point=(30.25, 41.5))
    k = N(det.intrinsics())
    np.testing.assert_allclose(k, [[3000.0, 0, 30.25], [0, 2250.0, 41.5], [0, 0, 1]], rtol=1e-14)


def test_intrinsics_keep_gradients():
    sdd = torch.tensor(1000.0, dtype=DT, requires_grad=True)
    det = g.Detector(rows=4, cols=4, sdd=sdd, pixel_spacing=(0.5, 0.25))
    k = det.intrinsics()
    k[0, 0].backward()
    assert abs(float(sdd.grad) - 1 / 0.25) < 1e-12


def _random_points_in_front(rng, pose, n=50):
    """World points whose camera z lies in [300, 700] mm."""
    cam = np.stack([rng.uniform(-80, 80, n), rng.uniform(-80, 80, n), rng.uniform(300, 700, n)], axis=1)
    inv = np.linalg.inv(pose)
    return (inv[:3, :3] @ cam.T).T + inv[:3, 3]


def test_project_matches_hand_pinhole():
    rng = np.random.default_rng(61)
    det = g.Detector(rows=120, cols=90, sdd=1000.0, pixel_spacing=(0.6, 0.35), principal_point=(40.0, 70.5))
    pose = random_pose(rng, 100)
    pts = _random_points_in_front(rng, pose)
    uv = N(g.project(T(pts), T(pose), det))
    k = np.array([[1000.0 / 0.35, 0, 40.0], [0, 1000.0 / 0.6, 70.5], [0, 0, 1]])
    cam = (pose[:3, :3] @ pts.T).T + pose[:3, 3]
    hom = (k @ cam.T).T
    np.testing.assert_allclose(uv, hom[:, :2] / hom[:, 2:], atol=1e-9)
    # explicitly: u = cx + sdd * x / (z du), v = cy + sdd * y / (z dv)
    np.testing.assert_allclose(uv[:, 0], 40.0 + 1000.0 * cam[:, 0] / (cam[:, 2] * 0.35), atol=1e-9)
    np.testing.assert_allclose(uv[:, 1], 70.5 + 1000.0 * cam[:, 1] / (cam[:, 2] * 0.6), atol=1e-9)


def test_project_batched_poses():
    rng = np.random.default_rng(62)
    det = g.Detector(rows=50, cols=60, sdd=800.0, pixel_spacing=(0.5, 0.7))
    poses = np.stack([random_pose(rng, 50) for _ in range(3)])
    pts = np.stack([_random_points_in_front(rng, p, 7) for p in poses])
    uv = N(g.project(T(pts), T(poses), det))
    assert uv.shape == (3, 7, 2)
    k = N(det.intrinsics())
    for b in range(3):
        cam = (poses[b, :3, :3] @ pts[b].T).T + poses[b, :3, 3]
        hom = (k @ cam.T).T
        np.testing.assert_allclose(uv[b], hom[:, :2] / hom[:, 2:], atol=1e-9)


def test_backproject_rays_project_back_and_detector_plane():
    rng = np.random.default_rng(63)
    det = g.Detector(rows=40, cols=70, sdd=1200.0, pixel_spacing=(0.3, 0.45), principal_point=(30.0, 22.0))
    pose = random_pose(rng, 300)
    pixels = np.stack([rng.uniform(-0.5, 69.5, 25), rng.uniform(-0.5, 39.5, 25)], axis=1)
    source, target = g.backproject(T(pixels), T(pose), det)
    source, target = N(source), N(target)
    # the source is the camera origin
    np.testing.assert_allclose(source, source_of(pose), atol=1e-9)
    # targets lie on the detector plane z = SDD, at the pixel's physical offset from the principal point
    cam = (pose[:3, :3] @ target.T).T + pose[:3, 3]
    np.testing.assert_allclose(cam[:, 2], 1200.0, atol=1e-9)
    np.testing.assert_allclose(cam[:, 0], (pixels[:, 0] - 30.0) * 0.45, atol=1e-9)
    np.testing.assert_allclose(cam[:, 1], (pixels[:, 1] - 22.0) * 0.3, atol=1e-9)
    # every point of the ray projects back onto the pixel
    for alpha in (0.2, 0.5, 1.0, 1.7):
        pts = source + alpha * (target - source)
        np.testing.assert_allclose(N(g.project(T(pts), T(pose), det)), pixels, atol=1e-8)


def test_principal_point_is_foot_of_perpendicular():
    det = g.Detector(rows=31, cols=41, sdd=1000.0, pixel_spacing=(0.5, 0.5), principal_point=(12.0, 25.0))
    pose = random_pose(np.random.default_rng(64), 100)
    src, tgt = g.backproject(T([[12.0, 25.0]]), T(pose), det)
    direction = (N(tgt)[0] - N(src)) / 1000.0
    np.testing.assert_allclose(direction, principal_ray(pose), atol=1e-12)


def test_pixel_grid_row_major():
    det = g.Detector(rows=2, cols=3, sdd=100.0)
    np.testing.assert_array_equal(N(g.pixel_grid(det)), [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])


@pytest.mark.parametrize(
    "rows, cols, spacing, pp, factor",
    [
        (200, 300, (0.4, 0.3), None, 2),
        (200, 300, (0.4, 0.3), (120.0, 80.5), 2),
        (201, 299, (0.4, 0.3), (150.0, 99.0), 4),
        (100, 100, (1.0, 0.5), (10.0, 90.0), 3),
        (64, 48, (0.5, 0.5), (20.0, 30.0), 1),
        (97, 113, (0.2, 0.9), None, 2.5),
    ],
)
def test_detector_downsample_keeps_physical_geometry(rows, cols, spacing, pp, factor):
    det = g.Detector(rows=rows, cols=cols, sdd=1000.0, pixel_spacing=spacing, principal_point=pp)
    small = det.downsample(factor)
    assert small.rows == max(1, round(rows / factor)) and small.cols == max(1, round(cols / factor))
    assert small.sdd == det.sdd
    # physical extent kept: rows * dv and cols * du
    assert abs(small.rows * small.pixel_spacing[0] - rows * spacing[0]) < 1e-9
    assert abs(small.cols * small.pixel_spacing[1] - cols * spacing[1]) < 1e-9
    # principal point at the same physical place (mm from the detector's top-left edge)
    _, du, dv, cx, cy = (float(v) for v in det.tensors())
    _, du2, dv2, cx2, cy2 = (float(v) for v in small.tensors())
    assert abs((cx + 0.5) * du - (cx2 + 0.5) * du2) < 1e-9
    assert abs((cy + 0.5) * dv - (cy2 + 0.5) * dv2) < 1e-9
    # a world point lands at the same physical detector position
    rng = np.random.default_rng(65)
    pose = random_pose(rng, 100)
    pts = _random_points_in_front(rng, pose, 20)
    uv = N(g.project(T(pts), T(pose), det))
    uv2 = N(g.project(T(pts), T(pose), small))
    np.testing.assert_allclose((uv[:, 0] + 0.5) * du, (uv2[:, 0] + 0.5) * du2, atol=1e-8)
    np.testing.assert_allclose((uv[:, 1] + 0.5) * dv, (uv2[:, 1] + 0.5) * dv2, atol=1e-8)


def test_detector_downsample_factor_below_one_raises():
    with pytest.raises(InputError, match=">= 1"):
        g.Detector(rows=10, cols=10, sdd=100.0).downsample(0.5)


def test_detector_accepts_numpy_integer_sizes():
    det = g.Detector(rows=np.int64(12), cols=np.int64(34), sdd=100.0)
    assert det.shape == (12, 34)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=0, cols=10, sdd=100.0), "rows must be a positive integer"),
        (dict(rows=-3, cols=10, sdd=100.0), "rows must be a positive integer"),
        (dict(rows=10, cols=0, sdd=100.0), "cols must be a positive integer"),
        (dict(rows=10, cols=-1, sdd=100.0), "cols must be a positive integer"),
        (dict(rows=10.5, cols=10, sdd=100.0), "rows must be a positive integer"),
        (dict(rows=True, cols=10, sdd=100.0), "rows must be a positive integer"),
        (dict(rows=10, cols=10, sdd=0.0), "source-to-detector distance must be a finite positive"),
        (dict(rows=10, cols=10, sdd=-500.0), "source-to-detector distance must be a finite positive"),
        (dict(rows=10, cols=10, sdd=float("nan")), "source-to-detector distance must be a finite positive"),
        (dict(rows=10, cols=10, sdd=float("inf")), "source-to-detector distance must be a finite positive"),
        (dict(rows=10, cols=10, sdd=100.0, pixel_spacing=(0.0, 1.0)), "pixel spacing must be two finite positive"),
        (dict(rows=10, cols=10, sdd=100.0, pixel_spacing=(1.0, -0.5)), "pixel spacing must be two finite positive"),
        (dict(rows=10, cols=10, sdd=100.0, pixel_spacing=(1.0, 1.0, 1.0)), "pixel spacing must be two"),
        (dict(rows=10, cols=10, sdd=100.0, pixel_spacing=(float("nan"), 1.0)), "pixel spacing must be two finite"),
        (dict(rows=10, cols=10, sdd=100.0, principal_point=(float("nan"), 1.0)), "principal point must be two finite"),
        (dict(rows=10, cols=10, sdd=100.0, principal_point=(1.0,)), "principal point must be two"),
    ],
)
def test_detector_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        g.Detector(**kwargs)


def _good_pose():
    return rigid(rz(0.3) @ rx(0.2), [1.0, 2.0, 3.0])


def _bad_poses():
    scaled = _good_pose()
    scaled[:3, :3] *= 1.1
    shear = _good_pose()
    shear[:3, :3] = shear[:3, :3] @ np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]])
    bottom = _good_pose()
    bottom[3] = [0, 0, 0.5, 1]
    bottom2 = _good_pose()
    bottom2[3, 3] = 2.0
    reflect = _good_pose()
    reflect[:3, 0] *= -1
    nan = _good_pose()
    nan[1, 3] = np.nan
    inf = _good_pose()
    inf[0, 0] = np.inf
    return [
        (scaled, "not rigid"),
        (shear, "not rigid"),
        (reflect, "not rigid"),
        (bottom, r"last row must be \[0, 0, 0, 1\]"),
        (bottom2, r"last row must be \[0, 0, 0, 1\]"),
        (nan, "NaN or infinite"),
        (inf, "NaN or infinite"),
        (np.eye(3), "4x4 matrix"),
        (np.eye(4)[:3], "4x4 matrix"),
        (np.zeros((2, 2, 4, 4)), "4x4 matrix"),
        (np.zeros((0, 4, 4)), "empty"),
    ]


@pytest.mark.parametrize("index", range(11))
def test_check_pose_rejects_bad_poses(index):
    pose, match = _bad_poses()[index]
    with pytest.raises(InputError, match=match):
        g.check_pose(T(pose))


def test_check_pose_rejects_bad_member_of_batch():
    batch = np.stack([_good_pose(), _good_pose()])
    batch[1, :3, :3] *= 0.9
    with pytest.raises(InputError, match="not rigid"):
        g.check_pose(T(batch))


def test_check_pose_accepts_rigid_and_returns_batch():
    out = g.check_pose(T(_good_pose()))
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(N(out)[0], _good_pose(), atol=0)
    batch = np.stack([_good_pose(), random_pose(np.random.default_rng(5))])
    assert g.check_pose(T(batch)).shape == (2, 4, 4)
    # integer identity is accepted and converted to floating point
    assert g.check_pose(torch.eye(4, dtype=torch.int64)).is_floating_point()
    # a tolerance just below the deviation is respected
    slightly = _good_pose()
    slightly[:3, :3] *= 1 + 1e-6
    g.check_pose(T(slightly))
    with pytest.raises(InputError, match="not rigid"):
        g.check_pose(T(slightly), tol=1e-8)


def test_axis_rotation_unknown_axis_raises():
    with pytest.raises(InputError, match="unknown rotation axis"):
        g.axis_rotation("W", torch.tensor(0.0, dtype=DT))
