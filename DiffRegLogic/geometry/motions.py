"""Rigid motions of the CT about a centre, and seeded sampling of such motions (start poses).

The CT centre is the natural pivot: a motion ``p -> c + R (p - c) + t``
rotates the CT about ``c`` and then shifts it. The registration's SE(3)
parameters, the random starts of the experiments and the error between two
poses are all expressed this way.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .rigid import invert_rigid, make_rigid, se3_exp, se3_log, so3_exp, so3_log, translation_matrix

def about_center(motion: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Conjugate a rigid motion so that it acts about ``center`` (mm, (..., 3)).

    Returns ``T(c) @ motion @ T(-c)``: with ``motion = [R | t]`` a point p maps to
    ``c + R (p - c) + t``, i.e. R rotates about c, then t translates.
    """
    return translation_matrix(center) @ motion @ translation_matrix(-center)


def motion_about_center(rotation: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """World motion p -> c + R (p - c) + t as a (..., 4, 4) matrix."""
    return about_center(make_rigid(rotation, translation), center)


def motion_about_center_params(motion: torch.Tensor, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `motion_about_center`: (..., 4, 4) -> (R (..., 3, 3), t (..., 3))."""
    local = translation_matrix(-center) @ motion @ translation_matrix(center)
    return local[..., :3, :3], local[..., :3, 3]


def pose_from_se3_about(reference_pose: torch.Tensor, xi: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Pose after moving the CT by exp(xi) about ``center``.

    ``camera_from_world(xi) = reference_pose @ T(c) exp(xi) T(-c)``: the
    registration parameterisation (xi = 0 gives the reference pose).
    """
    return reference_pose @ about_center(se3_exp(xi), center)


def se3_about_from_pose(reference_pose: torch.Tensor, pose: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Inverse of `pose_from_se3_about`."""
    motion = invert_rigid(reference_pose) @ pose
    return se3_log(translation_matrix(-center) @ motion @ translation_matrix(center))


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def random_motions(n: int, max_rotation_deg: float, max_translation_mm: float, seed: int,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n rigid motions (n, 3 + 3): rotation vectors (rad) and translations (mm), each component uniform.

    The rotation vector's components are uniform in +-max_rotation_deg and
    the translation's in +-max_translation_mm (the seed paper's sampling of
    starting poses). Seeded and independent of the global RNG.
    """
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, 6, generator=gen, dtype=dtype) * 2 - 1
    scale = torch.tensor([math.radians(max_rotation_deg)] * 3 + [max_translation_mm] * 3, dtype=dtype)
    return u * scale


def perturb_pose(pose: torch.Tensor, motions: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``pose @ T(c) [R(omega) t] T(-c)`` for motions (n, 6) -> (n, 4, 4): the CT rotated about its centre and shifted."""
    rot = so3_exp(motions[:, :3])
    return pose @ motion_about_center(rot, motions[:, 3:], center)


def pose_difference(a: torch.Tensor, b: torch.Tensor, center: torch.Tensor) -> dict:
    """Rotation angle (deg) and translation (mm, at ``center``) of the motion taking pose ``a`` to pose ``b``."""
    motion = invert_rigid(a) @ b
    angle = float(so3_log(motion[:3, :3]).norm())
    moved_center = motion[:3, :3] @ center + motion[:3, 3]
    return {"rotation_deg": float(np.rad2deg(angle)), "translation_mm": float((moved_center - center).norm())}


def orbit_pose(pose: torch.Tensor, center: torch.Tensor, degrees: float) -> torch.Tensor:
    """camera_from_world (4, 4) of the C-arm orbited by ``degrees`` about the axis through ``center`` (mm) along
    the camera's y (the detector rows): the second view of a biplane system, or a second shot of one C-arm.

    The CT's motion is a rotation about that axis, so ``center`` keeps its
    distance to the source and its place on the camera's y axis.
    """
    pose = torch.as_tensor(pose, dtype=torch.float64)
    axis = pose[:3, :3].T @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    rotation = so3_exp(axis * math.radians(float(degrees)))
    return pose @ motion_about_center(rotation, torch.zeros(3, dtype=torch.float64),
                                      torch.as_tensor(center, dtype=torch.float64))
