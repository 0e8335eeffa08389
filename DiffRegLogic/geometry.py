"""C-arm geometry: the detector, the pose, and every parameterisation of the pose.

The one convention (README, "Geometry"):

* World = the CT's physical space in millimetres, RAS.
* Camera (C-arm) frame: pinhole camera with the X-ray **source at the origin**,
  +z along the principal ray towards the detector, +x along increasing detector
  column, +y along increasing detector row (OpenCV). The detector plane is
  z = SDD.
* Intrinsics ``K = [[SDD/du, 0, cx], [0, SDD/dv, cy], [0, 0, 1]]`` with du, dv
  the column and row pixel spacing (mm) and (cx, cy) the principal point in
  pixels. Pixel (row r, col c) has its centre at (u=c, v=r); the default
  principal point is ((W-1)/2, (H-1)/2).
* Pose = ``camera_from_world``, a 4x4 rigid matrix; a world point p projects
  to ``K (R p + t)`` in homogeneous pixel coordinates.

All functions take torch tensors with arbitrary leading batch dimensions
(``(..., 4, 4)`` poses, ``(..., 3)`` vectors) and are differentiable, so that
gradients flow from a DRR back to any parameterisation. Angles are radians
unless a name says ``_deg``; lengths are millimetres.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .errors import InputError

Number = float | torch.Tensor


# --------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """A flat-panel detector seen through a pinhole at the X-ray source.

    Attributes:
        rows, cols: image size H, W in pixels.
        sdd: source-to-detector distance (mm).
        pixel_spacing: (row spacing dv, column spacing du) in mm, as DICOM
            ImagerPixelSpacing orders them.
        principal_point: (cx, cy) = (column, row) in pixels of the foot of the
            perpendicular from the source onto the detector; ``None`` means
            the image centre ((cols-1)/2, (rows-1)/2).

    ``sdd``, ``pixel_spacing`` and ``principal_point`` may be tensors with
    ``requires_grad`` so that DRRs are differentiable w.r.t. the intrinsics.
    """

    rows: int
    cols: int
    sdd: Number
    pixel_spacing: tuple[Number, Number] | torch.Tensor = (1.0, 1.0)
    principal_point: tuple[Number, Number] | torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InputError(
                    f"detector {name} must be a positive integer, got {value!r}; "
                    "a detector needs at least one pixel in each direction"
                )
            object.__setattr__(self, name, int(value))  # numpy integers -> int
        sdd = _as_float_tensor(self.sdd)
        if sdd.numel() != 1 or not torch.isfinite(sdd).all() or float(sdd) <= 0:
            raise InputError(f"source-to-detector distance must be a finite positive number of mm, got {self.sdd!r}")
        spacing = _as_float_tensor(self.pixel_spacing)
        if spacing.shape != (2,) or not torch.isfinite(spacing).all() or (spacing <= 0).any():
            raise InputError(
                f"pixel spacing must be two finite positive numbers (row mm, column mm), got {self.pixel_spacing!r}"
            )
        if self.principal_point is not None:
            pp = _as_float_tensor(self.principal_point)
            if pp.shape != (2,) or not torch.isfinite(pp).all():
                raise InputError(
                    f"principal point must be two finite numbers (column px, row px), got {self.principal_point!r}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.rows, self.cols)

    def tensors(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        """(sdd, du, dv, cx, cy) as 0-d tensors (gradients kept when inputs are tensors)."""

        def t(x):
            return torch.as_tensor(x, dtype=dtype, device=device)

        spacing = self.pixel_spacing
        dv, du = t(spacing[0]), t(spacing[1])
        if self.principal_point is None:
            cx, cy = t((self.cols - 1) / 2.0), t((self.rows - 1) / 2.0)
        else:
            cx, cy = t(self.principal_point[0]), t(self.principal_point[1])
        return t(self.sdd), du, dv, cx, cy

    def intrinsics(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """K, shape (3, 3)."""
        sdd, du, dv, cx, cy = self.tensors(dtype, device)
        zero, one = torch.zeros_like(sdd), torch.ones_like(sdd)
        return torch.stack(
            [
                torch.stack([sdd / du, zero, cx]),
                torch.stack([zero, sdd / dv, cy]),
                torch.stack([zero, zero, one]),
            ]
        )

    def downsample(self, factor: float) -> "Detector":
        """The same physical detector with ``factor`` times fewer pixels per side.

        The detector's physical extent and principal point (in mm) are kept:
        pixel spacing grows by ``old_size / new_size`` and pixel-centre
        coordinates map as ``c' = (c + 0.5) * new/old - 0.5``.
        """
        if factor < 1:
            raise InputError(f"downsampling factor must be >= 1, got {factor}")
        rows = max(1, int(round(self.rows / factor)))
        cols = max(1, int(round(self.cols / factor)))
        sy, sx = self.rows / rows, self.cols / cols
        spacing = (self.pixel_spacing[0] * sy, self.pixel_spacing[1] * sx)
        pp = None
        if self.principal_point is not None:
            pp = ((self.principal_point[0] + 0.5) / sx - 0.5, (self.principal_point[1] + 0.5) / sy - 0.5)
        return replace(self, rows=rows, cols=cols, pixel_spacing=spacing, principal_point=pp)


def _as_float_tensor(x) -> torch.Tensor:
    try:
        return torch.as_tensor(x, dtype=torch.float64).detach() if not isinstance(x, torch.Tensor) else x.detach().double()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"expected numbers, got {x!r}") from exc


# --------------------------------------------------------------------------
# Rigid matrices
# --------------------------------------------------------------------------


def make_rigid(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Assemble (..., 4, 4) from rotation (..., 3, 3) and translation (..., 3)."""
    batch = torch.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
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
    """Validate a camera_from_world pose; return it as a (B, 4, 4) tensor.

    Accepts (4, 4) or (B, 4, 4). Raises `InputError` unless every matrix is
    finite, has last row (0, 0, 0, 1) and a proper rotation block
    (R^T R = I and det R = +1 within ``tol``).
    """
    pose = torch.as_tensor(pose)
    if not pose.is_floating_point():
        pose = pose.double()
    if pose.ndim == 2:
        pose = pose[None]
    if pose.ndim != 3 or pose.shape[-2:] != (4, 4):
        raise InputError(f"{name} must be a 4x4 matrix or a batch (B, 4, 4), got shape {tuple(pose.shape)}")
    if pose.shape[0] == 0:
        raise InputError(f"{name} batch is empty: give at least one 4x4 matrix")
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
    return pose


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


# --------------------------------------------------------------------------
# Motions about a centre (the CT centre is the natural pivot)
# --------------------------------------------------------------------------


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
# C-arm models
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Projection and back-projection
# --------------------------------------------------------------------------


def project(points: torch.Tensor, pose: torch.Tensor, detector: Detector) -> torch.Tensor:
    """World points (..., N, 3) mm -> pixel coordinates (..., N, 2) as (u = column, v = row).

    ``pose`` (..., 4, 4) broadcasts against the points' leading dimensions.
    """
    k = detector.intrinsics(points.dtype, points.device)
    cam = points @ pose[..., :3, :3].transpose(-1, -2) + pose[..., None, :3, 3]
    hom = cam @ k.T
    return hom[..., :2] / hom[..., 2:3]


def backproject(pixels: torch.Tensor, pose: torch.Tensor, detector: Detector) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (..., N, 2) as (u, v) -> rays in world coordinates.

    Returns ``(source, target)``: the source position (..., 3) and, for each
    pixel, the point of the detector plane (..., N, 3) it sits on; the ray is
    ``source + alpha (target - source)`` with alpha in [0, 1] from source to
    detector.
    """
    sdd, du, dv, cx, cy = detector.tensors(pixels.dtype, pixels.device)
    x = (pixels[..., 0] - cx) * du
    y = (pixels[..., 1] - cy) * dv
    cam = torch.stack([x, y, sdd.expand_as(x)], -1)
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    source = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    target = (cam - pose[..., None, :3, 3]) @ rot_t.transpose(-1, -2)
    return source, target


def pixel_grid(detector: Detector, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Pixel centres (H*W, 2) as (u = column, v = row), row-major."""
    v, u = torch.meshgrid(
        torch.arange(detector.rows, dtype=dtype, device=device),
        torch.arange(detector.cols, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)
