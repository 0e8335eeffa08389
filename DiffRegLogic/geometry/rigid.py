"""Rigid matrices and rotations: assembly and checks, SE(3)/SO(3) exponential and logarithm, quaternions, Euler angles.

Poses are (..., 4, 4) tensors; every function is batched over leading
dimensions and differentiable. Angles in radians, lengths in mm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..limits import MAX_TRANSLATION_MM

# --------------------------------------------------------------------------
# Rigid matrices
# --------------------------------------------------------------------------


def make_rigid(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Assemble (..., 4, 4) from rotation (..., 3, 3) and translation (..., 3)."""
    # numpy's rule (torch.broadcast_shapes imports sympy on first use: 0.4 s per process)
    batch = np.broadcast_shapes(tuple(rotation.shape[:-2]), tuple(translation.shape[:-1]))
    rotation = rotation.expand(*batch, 3, 3)
    translation = translation.expand(*batch, 3)
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros(*batch, 1, 4, dtype=rotation.dtype, device=rotation.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def invert_rigid(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid (..., 4, 4) matrix: [R^T, -R^T t]."""
    rot_t = matrix[..., :3, :3].transpose(-1, -2)
    return make_rigid(rot_t, -(rot_t @ matrix[..., :3, 3:4])[..., 0])


def translation_matrix(offset: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) pure translation by offset (..., 3)."""
    eye = torch.eye(3, dtype=offset.dtype, device=offset.device).expand(*offset.shape[:-1], 3, 3)
    return make_rigid(eye, offset)


def check_pose(pose, tol: float = 1e-4, name: str = "pose") -> torch.Tensor:
    """Validate a camera_from_world pose; return it as a (B, 4, 4) tensor (not a copy: the input is never changed).

    Accepts (4, 4) or (B, 4, 4) real numbers (a tensor, an array or nested
    lists; integers become float64). Raises `InputError` unless every matrix
    is finite, has last row (0, 0, 0, 1), a proper rotation block (R^T R = I
    and det R = +1 within ``tol``) and a translation of at most
    `MAX_TRANSLATION_MM`. The test runs in float64 on the values as given;
    a pose stored in half precision is held to its own rounding
    (``max(tol, 4 eps)``), so a rigid pose rounded to float16 still passes.
    Cast a pose to a lower precision only after checking it.
    """
    pose = _as_pose_tensor(pose, name)
    if pose.ndim == 2:
        pose = pose[None]
    if pose.ndim != 3 or pose.shape[-2:] != (4, 4):
        raise InputError(f"{name} must be a 4x4 matrix or a batch (B, 4, 4), got shape {tuple(pose.shape)}")
    if pose.shape[0] == 0:
        raise InputError(f"{name} batch is empty: give at least one 4x4 matrix")
    tol = max(float(tol), 4.0 * torch.finfo(pose.dtype).eps)
    with torch.no_grad():
        p = pose.detach().double()
        if not torch.isfinite(p).all():
            raise InputError(f"{name} contains NaN or infinite values")
        last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=p.dtype, device=p.device)
        if (p[:, 3] - last).abs().max() > tol:
            raise InputError(f"{name} last row must be [0, 0, 0, 1], got {p[:, 3].tolist()}")
        rot = p[:, :3, :3]
        ortho = (rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=p.dtype, device=p.device)).abs().max()
        det = torch.linalg.det(rot)
        if ortho > tol or (det - 1).abs().max() > tol:
            raise InputError(
                f"{name} is not rigid: its 3x3 block must be a rotation (R^T R = I, det R = +1), "
                f"found |R^T R - I| = {float(ortho):.3g}, det R = {det.tolist()}. "
                "Scaling, shear or reflection are not allowed in camera_from_world."
            )
        shift = float(p[:, :3, 3].norm(dim=-1).max())
        if not math.isfinite(shift):  # the norm of components near 1e308 overflows
            shift = float(p[:, :3, 3].abs().max())
        if shift > MAX_TRANSLATION_MM:
            raise InputError(
                f"{name} translation is {shift:.3g} mm, more than the {MAX_TRANSLATION_MM:g} mm a pose may have; "
                "camera_from_world is in mm: check the units, and that the CT lies between source and detector"
            )
    return pose


def _as_pose_tensor(pose, name: str) -> torch.Tensor:
    """``pose`` as a real floating-point tensor (integers -> float64), else InputError naming ``name``."""
    if not isinstance(pose, torch.Tensor):
        try:
            array = np.asarray(pose)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name} must be a 4x4 matrix of numbers, got a {type(pose).__name__} that is not one "
                             "array of numbers (rows of different lengths?)") from None
        if array.dtype.kind not in "iuf":
            what = ("entries that are not one array of numbers (ragged rows, None, or integers beyond float range)"
                    if array.dtype.kind == "O" else f"{array.dtype} values")
            raise InputError(f"{name} must be a 4x4 matrix of real numbers, got {what}")
        keep = array.dtype.kind == "f" and array.dtype.itemsize in (2, 4, 8)
        dtype = array.dtype.newbyteorder("=") if keep else np.dtype(np.float64)
        pose = torch.from_numpy(np.ascontiguousarray(array.astype(dtype, copy=False)))
    if pose.is_complex() or pose.dtype == torch.bool:
        raise InputError(f"{name} must be a 4x4 matrix of real numbers, got a {pose.dtype} tensor")
    return pose if pose.is_floating_point() else pose.double()


# --------------------------------------------------------------------------
# Rotations: axis-angle, SE(3) exponential coordinates, quaternions, Euler
# --------------------------------------------------------------------------


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix [v]_x, (..., 3) -> (..., 3, 3)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)


def _exp_coefficients(omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sin(a)/a, (1 - cos a)/a^2, (a - sin a)/a^3 for a = |omega|, with their series below 1e-2 rad."""
    theta2 = (omega * omega).sum(-1)
    small = theta2 < 1e-4
    t2 = torch.where(small, torch.ones_like(theta2), theta2)  # keeps the unused branch finite (and its gradient)
    t = t2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, (1 - torch.cos(t)) / t2)
    c = torch.where(small, 1.0 / 6 - theta2 / 120 + theta2**2 / 5040, (t - torch.sin(t)) / (t2 * t))
    return a, b, c


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """SE(3) exponential: xi = (omega [rad], v [mm]) (..., 6) -> (..., 4, 4).

    omega is the rotation vector (axis * angle); v the translational part of
    the twist. Closed form (Rodrigues): ``R = I + A W + B W^2``,
    ``t = (I + B W + C W^2) v`` with W = [omega]_x, equal to the matrix
    exponential of the 4x4 twist, and smooth and cheap to differentiate at
    any angle (series below 1e-2 rad).
    """
    omega, v = xi[..., :3], xi[..., 3:]
    a, b, c = _exp_coefficients(omega)
    w = skew(omega)
    w2 = w @ w
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    rotation = eye + a[..., None, None] * w + b[..., None, None] * w2
    left = eye + b[..., None, None] * w + c[..., None, None] * w2
    return make_rigid(rotation, (left @ v[..., None])[..., 0])


def so3_log(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation vector (..., 3) of a rotation matrix (..., 3, 3); angle in [0, pi]."""
    trace = rotation[..., 0, 0] + rotation[..., 1, 1] + rotation[..., 2, 2]
    cos = ((trace - 1) / 2).clamp(-1, 1)
    vee = torch.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        -1,
    )
    # atan2 keeps full precision at every angle (acos loses digits near 0 and pi)
    sin = vee.norm(dim=-1) / 2
    angle = torch.atan2(sin, cos)
    small = angle < 1e-6
    scale = torch.where(small, 0.5 + angle**2 / 12, angle / (2 * torch.where(small, torch.ones_like(sin), sin)))
    omega = vee * scale[..., None]
    # Near pi, (R - R^T) vanishes: take the axis from the symmetric part.
    near_pi = angle > math.pi - 1e-3
    if near_pi.any():
        sym = (rotation + rotation.transpose(-1, -2)) / 2 - cos[..., None, None] * torch.eye(
            3, dtype=rotation.dtype, device=rotation.device
        )
        # sym = (1 - cos) a a^T: take its largest column.
        col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.gather(sym, -1, col[..., None, None].expand(*col.shape, 3, 1))[..., 0]
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Fix the sign with the (small) antisymmetric part where available.
        sign = torch.sign((axis * vee).sum(-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        omega = torch.where(near_pi[..., None], axis * (angle * sign)[..., None], omega)
    return omega


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) of a rotation vector (..., 3) (Rodrigues, closed form)."""
    a, b, _ = _exp_coefficients(omega)
    w = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a[..., None, None] * w + b[..., None, None] * (w @ w)


def se3_log(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of `se3_exp`: (..., 4, 4) -> (omega, v) (..., 6)."""
    omega = so3_log(matrix[..., :3, :3])
    angle = omega.norm(dim=-1)
    w = skew(omega)
    # coef = (1 - (a/2) cot(a/2)) / a^2; the closed form cancels for small a, so use its series there
    small = angle < 1e-2
    safe = torch.where(small, torch.ones_like(angle), angle)
    half = safe / 2
    coef = torch.where(
        small,
        1.0 / 12 + angle**2 / 720 + angle**4 / 30240,
        (1 - half * torch.cos(half) / torch.sin(half)) / safe**2,
    )
    eye = torch.eye(3, dtype=matrix.dtype, device=matrix.device)
    v_inv = eye - 0.5 * w + coef[..., None, None] * (w @ w)
    v = (v_inv @ matrix[..., :3, 3:4])[..., 0]
    return torch.cat([omega, v], -1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (w, x, y, z) (..., 4) -> rotation (..., 3, 3). Normalises q."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation (..., 3, 3) -> unit quaternion (w, x, y, z) with w >= 0.

    Takes the numerically best of the four candidate formulas (Shepperd).
    """
    m = rotation
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # (..., 4 candidates, 4 components); candidate i has component i = 4 q_i^2 / (2|q_i|)
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    chosen = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = chosen / chosen.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


_AXES = {"X": 0, "Y": 1, "Z": 2}


def axis_rotation(axis: str, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` (...,) about the world axis "X", "Y" or "Z" -> (..., 3, 3)."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, i = torch.zeros_like(angle), torch.ones_like(angle)
    if axis == "X":
        rows = [[i, o, o], [o, c, -s], [o, s, c]]
    elif axis == "Y":
        rows = [[c, o, s], [o, i, o], [-s, o, c]]
    elif axis == "Z":
        rows = [[c, -s, o], [s, c, o], [o, o, i]]
    else:
        raise InputError(f"unknown rotation axis {axis!r}; use 'X', 'Y' or 'Z'")
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _check_convention(convention: str) -> tuple[int, int, int]:
    if len(convention) != 3 or set(convention) - set(_AXES) or len(set(convention)) != 3:
        raise InputError(
            f"Euler convention {convention!r} not supported: use three distinct axes such as 'ZXY' or 'XYZ' (Tait-Bryan)"
        )
    return tuple(_AXES[a] for a in convention)  # type: ignore[return-value]


def euler_to_matrix(angles: torch.Tensor, convention: str = "ZXY") -> torch.Tensor:
    """Tait-Bryan angles (..., 3) -> rotation (..., 3, 3).

    ``R = R_a(angles[0]) @ R_b(angles[1]) @ R_c(angles[2])`` for
    ``convention = "abc"``: intrinsic rotations about a, then the new b, then
    the new c.
    """
    _check_convention(convention)
    r = axis_rotation(convention[0], angles[..., 0])
    r = r @ axis_rotation(convention[1], angles[..., 1])
    return r @ axis_rotation(convention[2], angles[..., 2])


def matrix_to_euler(rotation: torch.Tensor, convention: str = "ZXY") -> torch.Tensor:
    """Inverse of `euler_to_matrix`; the middle angle is in [-pi/2, pi/2]."""
    i, j, k = _check_convention(convention)
    sign = 1.0 if (j - i) % 3 == 1 else -1.0  # cyclic (XYZ, YZX, ZXY) or not
    middle = torch.asin((sign * rotation[..., i, k]).clamp(-1, 1))
    first = torch.atan2(-sign * rotation[..., j, k], rotation[..., k, k])
    last = torch.atan2(-sign * rotation[..., i, j], rotation[..., i, i])
    return torch.stack([first, middle, last], -1)
