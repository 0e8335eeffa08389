"""Continuous rotation outputs for the pose network, and the rotation maps its losses need.

A network cannot regress a rotation matrix directly (9 numbers with 6
constraints) and Euler angles or rotation vectors are discontinuous. Two
continuous parameterisations are offered (Zhou et al., CVPR 2019, argue for
the first):

* **6D**: two 3-vectors ``(a1, a2)``, orthonormalised by Gram-Schmidt into the
  first two *columns* of R; the third column is their cross product.
  The identity is ``(1, 0, 0, 0, 1, 0)``.
* **quaternion**: four numbers ``(w, x, y, z)`` normalised to unit length
  (``q`` and ``-q`` give the same rotation). The identity is ``(1, 0, 0, 0)``.

For the losses, `matrix_to_rotation_vector` (the poster's "rotation in
degrees" vector) and `geodesic_angle` (the angle of R1^T R2) are written so
that they and their gradients stay finite and accurate at and near the
identity, where the textbook ``acos((trace - 1) / 2)`` loses half its digits
and has an infinite derivative.

All functions accept any leading batch shape and keep dtype and device.
"""

from __future__ import annotations

import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.rigid import matrix_to_quaternion, quaternion_to_matrix

_EPS = 1e-12

__all__ = [
    "IDENTITY_6D",
    "IDENTITY_QUATERNION",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "quaternion_output_to_matrix",
    "matrix_to_rotation_vector",
    "geodesic_angle",
]

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
IDENTITY_QUATERNION = (1.0, 0.0, 0.0, 0.0)


def _check_last(x: torch.Tensor, size: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != size:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a tensor of shape (..., {size}); got {shape}")


def _check_matrix(r: torch.Tensor, name: str) -> None:
    if not isinstance(r, torch.Tensor) or r.ndim < 2 or tuple(r.shape[-2:]) != (3, 3):
        shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise InputError(f"{name} must be a tensor of shape (..., 3, 3); got {shape}")


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 with gradient 0 (not inf/NaN) at x = 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D rotation (..., 6) -> rotation matrix (..., 3, 3) by Gram-Schmidt.

    ``b1 = a1 / |a1|``, ``b2 = normalise(a2 - (b1 . a2) b1)``, ``b3 = b1 x b2``;
    R has columns (b1, b2, b3), so it is orthonormal with det +1 for any
    input with a1 and a2 not parallel (norms are clamped at 1e-12).
    """
    _check_last(x, 6, "6D rotation")
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = u2 / u2.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> its 6D form (..., 6): the first two columns, concatenated.

    Inverse of `rotation_6d_to_matrix` on rotation matrices.
    """
    _check_matrix(rotation, "rotation")
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1]], dim=-1)


def quaternion_output_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Raw quaternion output (w, x, y, z) (..., 4) -> rotation matrix (..., 3, 3).

    The output is divided by its norm (clamped at 1e-12) first, so any
    non-zero scale gives the same rotation, and ``q`` and ``-q`` agree.
    """
    _check_last(q, 4, "quaternion")
    unit = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return quaternion_to_matrix(unit)


def matrix_to_rotation_vector(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> rotation vector (axis * angle, rad) (..., 3), angle in [0, pi].

    Goes through the unit quaternion (w >= 0, Shepperd's choice of formula):
    ``omega = 2 atan2(|v|, w) v / |v|``. The factor ``2 atan2(s, w) / s`` is
    replaced by its series ``(2 / w)(1 - s^2 / (3 w^2))`` for ``s^2 < 1e-8``
    (angle below ~2e-4 rad), so the map and its Jacobian (the identity at the
    identity) are smooth there; it depends on ``s^2`` only, never on ``|v|``.
    """
    _check_matrix(rotation, "rotation")
    q = matrix_to_quaternion(rotation)
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)
    small = s2 < 1e-8
    s = _safe_sqrt(torch.where(small, torch.ones_like(s2), s2))
    w_safe = torch.where(small, w, torch.ones_like(w))  # w ~ 1 where small
    factor = torch.where(small, (2.0 / w_safe) * (1.0 - s2 / (3.0 * w_safe * w_safe)), 2.0 * torch.atan2(s, w) / s)
    return v * factor[..., None]


def geodesic_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (rad, in [0, pi]) of the relative rotation ``a^T b``, (..., 3, 3) x 2 -> (...,).

    ``atan2(|vee(M - M^T)| / 2, (trace M - 1) / 2)`` with ``M = a^T b``: full
    precision at every angle (acos of the cosine loses digits near 0 and pi).
    Its gradient is finite everywhere (0 at exactly equal rotations, where
    the angle has a corner like ``|x|``).
    """
    _check_matrix(a, "rotation a")
    _check_matrix(b, "rotation b")
    m = a.transpose(-1, -2) @ b
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cos = (trace - 1.0) / 2.0
    vee = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    sin = _safe_sqrt((vee * vee).sum(-1)) / 2.0
    return torch.atan2(sin, cos)
