"""The pose network's rotation outputs and maps (`DiffRegLogic.learning.rotations`).

Truth: rotations built by `geometry.rigid.so3_exp` and the closed-form
rotation about z; `geometry.rigid.so3_log` (an independent implementation)
for the rotation vector; |a - b| for the angle between two rotations about
one axis; orthonormality and det = 1 checked directly; Jacobians at the
identity against the identity matrix.
"""

from __future__ import annotations

import math

import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.rigid import so3_exp, so3_log
from DiffRegLogic.learning.rotations import (IDENTITY_6D, IDENTITY_QUATERNION, geodesic_angle,
                                             matrix_to_rotation_6d, matrix_to_rotation_vector,
                                             quaternion_output_to_matrix, rotation_6d_to_matrix)


def _rz(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def _random_rotations(n: int, max_angle: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle
    return so3_exp(axis * angle)


def test_6d_round_trip_on_rotations():
    rotations = _random_rotations(50, 3.0, seed=1)
    six = matrix_to_rotation_6d(rotations)
    assert six.shape == (50, 6)
    torch.testing.assert_close(six[:, :3], rotations[:, :, 0])
    torch.testing.assert_close(rotation_6d_to_matrix(six), rotations, atol=1e-12, rtol=0)
    torch.testing.assert_close(rotation_6d_to_matrix(torch.tensor(IDENTITY_6D, dtype=torch.float64)),
                               torch.eye(3, dtype=torch.float64), atol=0, rtol=0)


def test_6d_of_arbitrary_vectors_is_gram_schmidt():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, 6, generator=g, dtype=torch.float64) * 3
    r = rotation_6d_to_matrix(x)
    assert r.shape == (4, 5, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    a1, a2 = x[..., :3], x[..., 3:]
    torch.testing.assert_close(r[..., 0], a1 / a1.norm(dim=-1, keepdim=True))
    # the second column lies in span(a1, a2), on a2's side of a1
    assert ((r[..., 1] * a2).sum(-1) > 0).all()
    normal = torch.linalg.cross(a1, a2, dim=-1)
    torch.testing.assert_close((r[..., 1] * normal).sum(-1), torch.zeros(4, 5, dtype=torch.float64), atol=1e-10,
                               rtol=0)
    # and the 6D form of the result maps back to the same rotation
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(r)), r, atol=1e-12, rtol=0)


def test_quaternion_output_is_normalised_and_sign_free():
    half = math.radians(5.0)
    q = torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)], dtype=torch.float64)
    expected = _rz(10.0)
    for scale in (1.0, 3.0, 0.01, -1.0, -7.5):
        torch.testing.assert_close(quaternion_output_to_matrix(scale * q), expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(quaternion_output_to_matrix(torch.tensor(IDENTITY_QUATERNION)), torch.eye(3))
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(20, 4, generator=g, dtype=torch.float64) * 5
    r = quaternion_output_to_matrix(raw)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, torch.eye(3, dtype=torch.float64).expand(20, 3, 3),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(quaternion_output_to_matrix(-raw), r, atol=1e-13, rtol=0)


def test_rotation_vector_matches_so3_log():
    rotations = _random_rotations(200, 3.0, seed=4)
    torch.testing.assert_close(matrix_to_rotation_vector(rotations), so3_log(rotations), atol=1e-10, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-6, 1e-4, 1e-2])
def test_rotation_vector_is_accurate_near_identity(angle):
    omega = torch.tensor([0.6, -0.48, 0.64], dtype=torch.float64) * angle
    got = matrix_to_rotation_vector(so3_exp(omega))
    torch.testing.assert_close(got, omega, atol=1e-15, rtol=1e-9)


def test_rotation_vector_jacobian_at_identity_is_identity():
    def f(omega):
        return matrix_to_rotation_vector(so3_exp(omega))

    for omega in (torch.zeros(3, dtype=torch.float64), torch.full((3,), 1e-7, dtype=torch.float64)):
        jac = torch.autograd.functional.jacobian(f, omega)
        assert torch.isfinite(jac).all()
        torch.testing.assert_close(jac, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("a, b", [(0.0, 10.0), (30.0, 20.0), (-50.0, 70.0), (0.0, 1e-5), (5.0, 5.0 + 1e-6)])
def test_geodesic_angle_about_one_axis(a, b):
    angle = geodesic_angle(_rz(a), _rz(b))
    expected = math.radians(abs(a - b))
    # acos((trace - 1) / 2) would be off by ~1e-8 rad at these small angles
    assert abs(angle.item() - expected) <= 1e-9 * max(expected, 1e-6)


def test_geodesic_angle_general_and_gradient_at_equality():
    r1, r2 = _random_rotations(30, 1.5, seed=5), _random_rotations(30, 1.5, seed=6)
    expected = so3_log(r1.transpose(-1, -2) @ r2).norm(dim=-1)
    torch.testing.assert_close(geodesic_angle(r1, r2), expected, atol=1e-12, rtol=0)
    six = matrix_to_rotation_6d(r1[:3]).clone().requires_grad_(True)
    geodesic_angle(rotation_6d_to_matrix(six), r1[:3]).sum().backward()
    assert torch.isfinite(six.grad).all()


def test_bad_shapes_are_refused():
    with pytest.raises(InputError, match=r"\(\.\.\., 6\)"):
        rotation_6d_to_matrix(torch.zeros(3, 5))
    with pytest.raises(InputError, match=r"\(\.\.\., 4\)"):
        quaternion_output_to_matrix(torch.zeros(3))
    with pytest.raises(InputError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_rotation_vector(torch.zeros(2, 4, 4))
