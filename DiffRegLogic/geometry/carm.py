"""The spherical C-arm model of the seed paper and the clinical C-arm angles of DICOM XA/RF.

Each maps to and from ``camera_from_world`` (`DiffRegLogic.geometry`'s
convention) and is tested to round-trip.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .rigid import axis_rotation, make_rigid


# world_from_camera rotation of the reference views. Columns = camera x, y, z
# axes in RAS.
#   AP: source anterior, beam towards posterior (z = -A), rows towards the
#       feet (y = -S), columns towards the patient's left (x = -R).
#   PA: source posterior, beam towards anterior (z = +A), rows towards the
#       feet, columns towards the patient's right. DICOM's 0/0 C-arm position.
_AP = ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0))  # columns x, y, z
_PA = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


def _frame(columns, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(columns, dtype=like.dtype, device=like.device).T


def _pose_from_source(world_from_camera_rot: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    rot = world_from_camera_rot.transpose(-1, -2)
    return make_rigid(rot, -(rot @ source[..., None])[..., 0])


def spherical_carm_to_pose(params: torch.Tensor, sdd: float, center: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
                           radius: float | None = None) -> torch.Tensor:
    """The seed paper's spherical C-arm model -> camera_from_world (..., 4, 4).

    ``params = (theta, phi, gamma, bx, by, bz)`` (rad, rad, rad, mm, mm, mm).
    The source lies on a sphere of radius ``rho`` (default SDD/2) about the
    isocentre ``center + b``; the principal ray passes through the isocentre,
    so the detector's centre lies on the far side at SDD - rho.

    * theta: azimuth, rotation of the AP view about the patient's superior (S) axis;
    * phi: elevation, rotation about the patient's right-left (R) axis;
    * gamma: roll of the detector about the principal ray;

    i.e. world_from_camera rotation ``W = Rz(theta) Rx(phi) W_AP Rz(gamma)``.

    At zero angles this is an AP view with the isocentre at ``center + b``.
    """
    params = torch.as_tensor(params)
    center = torch.as_tensor(center, dtype=params.dtype, device=params.device)
    rho = sdd / 2.0 if radius is None else radius
    theta, phi, gamma = params[..., 0], params[..., 1], params[..., 2]
    w = axis_rotation("Z", theta) @ axis_rotation("X", phi) @ _frame(_AP, params) @ axis_rotation("Z", gamma)
    iso = center + params[..., 3:6]
    source = iso - rho * w[..., :, 2]
    return _pose_from_source(w, source)


def pose_to_spherical_carm(pose: torch.Tensor, sdd: float, center: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
                           radius: float | None = None) -> torch.Tensor:
    """Inverse of `spherical_carm_to_pose` (the isocentre is the point at rho along the principal ray)."""
    center = torch.as_tensor(center, dtype=pose.dtype, device=pose.device)
    rho = sdd / 2.0 if radius is None else radius
    w = pose[..., :3, :3].transpose(-1, -2)
    source = -(w @ pose[..., :3, 3:4])[..., 0]
    z = w[..., :, 2]
    phi = torch.asin((-z[..., 2]).clamp(-1, 1))
    theta = torch.atan2(z[..., 0], -z[..., 1])
    base = axis_rotation("Z", theta) @ axis_rotation("X", phi) @ _frame(_AP, pose)
    roll = base.transpose(-1, -2) @ w
    gamma = torch.atan2(roll[..., 1, 0], roll[..., 0, 0])
    b = source + rho * z - center
    return torch.cat([torch.stack([theta, phi, gamma], -1), b], -1)


def clinical_to_pose(primary_deg, secondary_deg, source_to_isocenter_mm,
                     isocenter: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Clinical C-arm angles as DICOM XA/RF store them -> camera_from_world (..., 4, 4).

    * primary_deg: PositionerPrimaryAngle (0018,1510), LAO positive, RAO negative;
    * secondary_deg: PositionerSecondaryAngle (0018,1511), CRA positive, CAU negative;
    * source_to_isocenter_mm: DistanceSourceToPatient (0018,1111);
    * isocenter: RAS point (mm) the principal ray passes through.

    At 0/0 the detector is anterior to a supine patient (a PA projection); LAO
    moves the detector towards the patient's left, CRA towards the head. The
    detector's row direction stays as close to the patient's feet as the
    angles allow (no roll).
    """
    primary = torch.deg2rad(torch.as_tensor(primary_deg, dtype=dtype))
    secondary = torch.deg2rad(torch.as_tensor(secondary_deg, dtype=dtype))
    primary, secondary = torch.broadcast_tensors(primary, secondary)
    iso = torch.as_tensor(isocenter, dtype=dtype)
    w = axis_rotation("Z", primary) @ axis_rotation("X", secondary) @ _frame(_PA, primary)
    source = iso - torch.as_tensor(source_to_isocenter_mm, dtype=dtype)[..., None] * w[..., :, 2]
    return _pose_from_source(w, source)


def pose_to_clinical(pose: torch.Tensor, isocenter: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0)):
    """Inverse of `clinical_to_pose`: (primary_deg, secondary_deg, source_to_isocenter_mm).

    The source-to-isocentre distance is measured along the principal ray to
    the point closest to ``isocenter``. A pose with roll about the principal
    ray or an isocentre off the principal ray has no exact clinical form; the
    angles describe its principal ray direction.
    """
    iso = torch.as_tensor(isocenter, dtype=pose.dtype, device=pose.device)
    w = pose[..., :3, :3].transpose(-1, -2)
    source = -(w @ pose[..., :3, 3:4])[..., 0]
    z = w[..., :, 2]
    secondary = torch.asin(z[..., 2].clamp(-1, 1))
    primary = torch.atan2(-z[..., 0], z[..., 1])
    distance = ((iso - source) * z).sum(-1)
    return torch.rad2deg(primary), torch.rad2deg(secondary), distance
