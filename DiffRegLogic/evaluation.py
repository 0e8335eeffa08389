"""Registration error metrics against a ground-truth pose.

The standard 2D/3D evaluation of van de Kraats et al. (IEEE TMI 2005,
"Standardized evaluation methodology for 2-D-3-D registration") plus geodesic
pose errors. Poses are ``camera_from_world`` rigid matrices in mm (README,
"Geometry"): an estimated pose ``est`` and the true (gold-standard) pose
``true``, each (4, 4) or (B, 4, 4). World = the CT's RAS space in mm; the
camera frame has the X-ray source at the origin and the detector at z = SDD.

Write ``c_e = R_e p + t_e`` and ``c_t = R_t p + t_t`` for where the two poses
put a world point p in the camera frame. Then, per point:

* TRE  = |c_e - c_t| (3D target registration error, mm); `mtre` is its mean.
* PD   = |P(c_e) - P(c_t)| on the detector, in mm (projection distance);
  `mpd`.
* RPD  = distance from c_e to the line through the source and c_t (the
  reprojection distance: the point's true projection, back-projected with
  the estimated pose, misses the point by this much); `mrpd`.

and per pose: `rotation_error_deg` (geodesic angle of R_e R_t^T) and
`translation_error_mm` (TRE of one point, e.g. the CT centre), together in
`pose_errors`. `success_rate` and `summarize` reduce many errors to the
figures papers report (mean, median, 90th percentile, success rates).

Shapes: every metric accepts an estimated pose (4, 4) or (B, 4, 4) and a true
pose (4, 4) or (B, 4, 4) (a single true pose serves a whole batch) and returns
a float64 tensor (B,), or a 0-d tensor when both poses are single (4, 4)
matrices. Computations run in float64 on the estimated pose's device and keep
autograd graphs.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import InputError
from .geometry import Detector, check_pose, project
from .volume import Volume

DTYPE = torch.float64
_RANDPERM_LIMIT = 1 << 22  # candidate counts up to this are subsampled with one randperm

__all__ = [
    "target_points",
    "mtre",
    "mpd",
    "mrpd",
    "rotation_error_deg",
    "translation_error_mm",
    "pose_errors",
    "success_rate",
    "summarize",
]


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _pose_pair(est, true) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validated (B, 4, 4) float64 est and true poses on est's device, and whether both were single."""
    ndims = []
    for value, name in ((est, "estimated pose"), (true, "true pose")):
        try:
            ndims.append(torch.as_tensor(value).ndim)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name} must be a 4x4 matrix or a batch (B, 4, 4) of numbers, got {value!r}") from exc
    e = check_pose(est, name="estimated pose")
    t = check_pose(true, name="true pose")
    e = e.to(DTYPE)
    t = t.to(device=e.device, dtype=DTYPE)
    be, bt = e.shape[0], t.shape[0]
    if be != bt and 1 not in (be, bt):
        raise InputError(
            f"batch sizes differ: {be} estimated poses but {bt} true poses; "
            "give one true pose for the whole batch or one per estimated pose"
        )
    b = max(be, bt)
    return e.expand(b, 4, 4), t.expand(b, 4, 4), ndims == [2, 2]


def _points(points, device) -> torch.Tensor:
    """Validated (N, 3) float64 points on ``device``."""
    try:
        p = torch.as_tensor(points)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"points must be an (N, 3) array of world coordinates in mm, got {points!r}") from exc
    if p.ndim != 2 or p.shape[-1] != 3:
        raise InputError(
            f"points must be an (N, 3) array of world (RAS) coordinates in mm, got shape {tuple(p.shape)}; "
            "use target_points(volume) to get a set from the CT"
        )
    if p.shape[0] == 0:
        raise InputError("points is empty: give at least one (x, y, z) point, e.g. from target_points(volume)")
    if p.is_complex() or p.dtype == torch.bool:
        raise InputError(f"points must be real numbers, got dtype {p.dtype}")
    p = p.to(device=device, dtype=DTYPE)
    if not torch.isfinite(p.detach()).all():
        raise InputError("points contain NaN or infinite coordinates; remove them first")
    return p


def _point3(center, device, name: str = "center") -> torch.Tensor:
    try:
        c = torch.as_tensor(center)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name} must be one (x, y, z) point in mm, got {center!r}") from exc
    if c.shape != (3,):
        raise InputError(f"{name} must be one (x, y, z) point in mm, shape (3,), got shape {tuple(c.shape)}")
    c = c.to(device=device, dtype=DTYPE)
    if not torch.isfinite(c.detach()).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return c


def _check_detector(detector) -> None:
    if not isinstance(detector, Detector):
        raise InputError(
            f"detector must be a DiffRegLogic.geometry.Detector, got {type(detector).__name__}; "
            "build one with Detector(rows, cols, sdd, pixel_spacing)"
        )


def _camera(points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Camera coordinates (B, N, 3) of world points (N, 3) under poses (B, 4, 4)."""
    return points @ pose[:, :3, :3].transpose(-1, -2) + pose[:, None, :3, 3]


def _displacement(points: torch.Tensor, est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """c_e - c_t, (B, N, 3), formed from the pose differences so identical poses give exactly 0."""
    d_rot = est[:, :3, :3] - true[:, :3, :3]
    d_trans = est[:, :3, 3] - true[:, :3, 3]
    return points @ d_rot.transpose(-1, -2) + d_trans[:, None, :]


def _require_in_front(cam_true: torch.Tensor) -> None:
    with torch.no_grad():
        behind = cam_true[..., 2] <= 0
        if behind.any():
            raise InputError(
                f"{int(behind.sum())} point(s) lie at or behind the X-ray source under the true pose "
                "(camera z <= 0), so they have no projection on the detector; "
                "use points inside the imaged CT (e.g. target_points(volume)) and check the true pose"
            )


def _finish(values: torch.Tensor, unbatched: bool) -> torch.Tensor:
    return values[0] if unbatched else values


def _positive_threshold(threshold, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (numbers.Real, np.floating, np.integer)):
        if isinstance(threshold, torch.Tensor) and threshold.numel() == 1:
            threshold = float(threshold)
        else:
            raise InputError(f"{name} must be a positive number (mm or degrees), got {threshold!r}")
    threshold = float(threshold)
    if not math.isfinite(threshold) or threshold <= 0:
        raise InputError(
            f"{name} must be a finite positive number (an error below it counts as a success), got {threshold}"
        )
    return threshold


def _errors_array(errors) -> np.ndarray:
    if isinstance(errors, torch.Tensor):
        arr = errors.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(errors, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"errors must be a sequence of numbers (mm or degrees), got {errors!r}") from exc
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise InputError("errors is empty: give at least one error value to summarise")
    return arr


# --------------------------------------------------------------------------
# Target points
# --------------------------------------------------------------------------


def _sample_ranks(count: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n distinct sorted integers from [0, count), deterministic for the generator's seed."""
    if count <= max(4 * n, _RANDPERM_LIMIT):
        ranks = torch.randperm(count, generator=generator)[:n]
    else:
        # Rejection sampling keeps memory O(n) for huge candidate sets (count > 4 n).
        ranks = torch.empty(0, dtype=torch.int64)
        while ranks.numel() < n:
            draw = torch.randint(0, count, (2 * n,), generator=generator)
            ranks = torch.unique(torch.cat([ranks, draw]))
            if ranks.numel() > n:
                keep = torch.randperm(ranks.numel(), generator=generator)[:n]
                ranks = ranks[keep]
    return torch.sort(ranks).values


def target_points(volume: Volume, n: int = 2000, threshold: float | None = None, seed: int = 0) -> torch.Tensor:
    """A dense set of CT points (world RAS mm) for mTRE, mPD and mRPD.

    The points are the centres of the voxels whose attenuation ``mu`` strictly
    exceeds ``threshold`` (same unit as ``volume.mu``, normally 1/mm),
    subsampled without replacement to at most ``n`` points by a generator
    seeded with ``seed`` (the same volume, n, threshold and seed always give
    the same points, in voxel memory order (k, j, i)).

    Default threshold (``None``): the volume's mean mu. In a CT with air around
    the patient this keeps the patient (soft tissue and bone) and drops the
    air, without assuming units or an energy. If no voxel exceeds the mean (a
    constant volume), the threshold drops to 0, i.e. every voxel with positive
    attenuation.

    Fallback: if no voxel exceeds the threshold, the 9 points made of the 8
    corners of the box spanned by the voxel centres (indices 0 and n-1 along
    each axis) and the volume centre are returned, so the metrics still
    measure the error over the whole CT.

    Args:
        volume: the CT (`Volume`).
        n: the most points to return (positive integer).
        threshold: mu level, or ``None`` for the default above.
        seed: seed of the subsampling.

    Returns:
        (N, 3) float64 RAS points in mm on the volume's device, 1 <= N <= n
        (N = 9 for the fallback, even if n < 9).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InputError(f"n (the most target points) must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an integer, got {seed!r}")
    mu = volume.mu.detach()
    if threshold is None:
        level = float(mu.double().mean())
        if not bool((mu > level).any()):
            level = 0.0
    else:
        try:
            level = float(threshold)
        except (TypeError, ValueError) as exc:
            raise InputError(f"threshold must be a number (same unit as volume.mu, 1/mm), got {threshold!r}") from exc
        if not math.isfinite(level):
            raise InputError(f"threshold must be finite, got {threshold!r}")
    mask = (mu > level).to("cpu")
    per_slice = mask.flatten(1).sum(1)  # (K,) candidates in each slice
    count = int(per_slice.sum())
    ni, nj, nk = volume.shape_ijk
    if count == 0:
        corners = torch.tensor(
            [[i, j, k] for k in (0, nk - 1) for j in (0, nj - 1) for i in (0, ni - 1)]
            + [[(ni - 1) / 2.0, (nj - 1) / 2.0, (nk - 1) / 2.0]],
            dtype=DTYPE,
        )
        return volume.index_to_world(corners.to(volume.affine.device))
    generator = torch.Generator().manual_seed(int(seed))
    ranks = torch.arange(count) if count <= n else _sample_ranks(count, int(n), generator)
    # Map global ranks (in (k, j, i) memory order) to voxels slice by slice, so
    # memory stays O(one slice + n) even for large CTs.
    ends = torch.cumsum(per_slice, 0)
    starts = ends - per_slice
    slice_of = torch.searchsorted(ends, ranks, right=True)
    flat = torch.empty_like(ranks)
    for k in torch.unique(slice_of).tolist():
        sel = slice_of == k
        in_slice = torch.nonzero(mask[k].reshape(-1))[:, 0]
        flat[sel] = in_slice[ranks[sel] - starts[k]] + k * nj * ni
    ijk = torch.stack([flat % ni, (flat // ni) % nj, flat // (ni * nj)], -1).to(DTYPE)
    return volume.index_to_world(ijk.to(volume.affine.device))


# --------------------------------------------------------------------------
# Point-based metrics
# --------------------------------------------------------------------------


def mtre(est, true, points) -> torch.Tensor:
    """Mean target registration error (mm).

    ``mTRE = mean_p |(R_e p + t_e) - (R_t p + t_t)|``: how far apart the two
    poses put each point in the camera frame (equal to the distance in world
    coordinates after mapping back with either inverse).

    Args:
        est: estimated camera_from_world, (4, 4) or (B, 4, 4).
        true: true camera_from_world, (4, 4), (1, 4, 4) or (B, 4, 4).
        points: (N, 3) world points in mm (e.g. `target_points`).

    Returns:
        (B,) float64 mm, or 0-d for single poses.
    """
    e, t, unbatched = _pose_pair(est, true)
    p = _points(points, e.device)
    return _finish(_displacement(p, e, t).norm(dim=-1).mean(-1), unbatched)


def mpd(est, true, points, detector: Detector) -> torch.Tensor:
    """Mean projection distance on the detector plane (mm).

    Each point is projected with both poses (`geometry.project`, pixels
    (u, v)); the distance is ``sqrt((du (u_e - u_t))^2 + (dv (v_e - v_t))^2)``
    with du, dv the column and row pixel spacing (mm), i.e. measured on the
    detector plane at z = SDD, not at the patient.

    Points must lie in front of the source under the true pose (camera z > 0;
    otherwise `InputError`). A point that the estimated pose puts at or behind
    the source has no projection: its distance, and so that pose's mPD, is NaN
    (counted as a failure by `success_rate` and `summarize`).

    Args:
        est, true: as in `mtre`.
        points: (N, 3) world points in mm.
        detector: the `Detector` (intrinsics and pixel spacing).

    Returns:
        (B,) float64 mm, or 0-d for single poses.
    """
    e, t, unbatched = _pose_pair(est, true)
    p = _points(points, e.device)
    _check_detector(detector)
    _require_in_front(_camera(p, t))
    _, du, dv, _, _ = detector.tensors(DTYPE, e.device)
    delta = project(p, e, detector) - project(p, t, detector)  # (B, N, 2) pixels
    dist = torch.stack([delta[..., 0] * du, delta[..., 1] * dv], -1).norm(dim=-1)
    behind = _camera(p, e)[..., 2] <= 0
    dist = torch.where(behind, torch.full_like(dist, float("nan")), dist)
    return _finish(dist.mean(-1), unbatched)


def mrpd(est, true, points, detector: Detector | None = None) -> torch.Tensor:
    """Mean reprojection distance (mm), van de Kraats et al. 2005.

    For each point p: project it with the true pose (where it appears in the
    X-ray), back-project that detector point with the estimated pose (a line
    from the estimated source into the CT) and measure how far that line
    passes from p. Mapped into the camera frame by the estimated pose (rigid,
    so distances are kept) this is the distance from ``c_e = R_e p + t_e`` to
    the line through the source (origin) and ``c_t = R_t p + t_t``::

        RPD = |c_e x c_t| / |c_t| = |(c_e - c_t) x c_t| / |c_t|

    It is zero when the estimate only moves the point along its own true ray
    (the depth error a single view cannot see) and equals the lateral part of
    the displacement otherwise. The detector's intrinsics do not enter (the
    back-projection of a projection is the same ray for any K); ``detector``
    is accepted for a signature like `mpd` and only type-checked.

    Points must lie in front of the source under the true pose (camera z > 0;
    otherwise `InputError`).

    Returns:
        (B,) float64 mm, or 0-d for single poses.
    """
    e, t, unbatched = _pose_pair(est, true)
    p = _points(points, e.device)
    if detector is not None:
        _check_detector(detector)
    cam_t = _camera(p, t)
    _require_in_front(cam_t)
    diff = _displacement(p, e, t)
    dist = torch.linalg.cross(diff, cam_t, dim=-1).norm(dim=-1) / cam_t.norm(dim=-1)
    return _finish(dist.mean(-1), unbatched)


# --------------------------------------------------------------------------
# Pose errors
# --------------------------------------------------------------------------


def rotation_error_deg(est, true) -> torch.Tensor:
    """Geodesic rotation error: the angle of ``R_e R_t^T`` in degrees, in [0, 180].

    With ``E = (R_e - R_t) R_t^T = R_e R_t^T - I`` the angle is
    ``atan2(|vee(E)| / 2, 1 + tr(E) / 2)`` (sin and cos of the angle), which
    is exactly 0 for identical rotations and accurate at every angle up to
    and including 180 degrees (no acos).

    Returns:
        (B,) float64 degrees, or 0-d for single poses.
    """
    e, t, unbatched = _pose_pair(est, true)
    rt = t[:, :3, :3]
    diff = (e[:, :3, :3] - rt) @ rt.transpose(-1, -2)
    vee = torch.stack(
        [diff[:, 2, 1] - diff[:, 1, 2], diff[:, 0, 2] - diff[:, 2, 0], diff[:, 1, 0] - diff[:, 0, 1]], -1
    )
    sin = vee.norm(dim=-1) / 2
    cos = 1 + diff.diagonal(dim1=-2, dim2=-1).sum(-1) / 2
    return _finish(torch.rad2deg(torch.atan2(sin, cos)), unbatched)


def translation_error_mm(est, true, center) -> torch.Tensor:
    """Translation error (mm): the TRE of one point, ``|(R_e c + t_e) - (R_t c + t_t)|``.

    ``center`` (3,) world mm, normally the CT centre (``volume.center``): the
    error is then independent of where the world origin happens to lie, unlike
    the raw difference of the translation columns.

    Returns:
        (B,) float64 mm, or 0-d for single poses.
    """
    e, t, unbatched = _pose_pair(est, true)
    c = _point3(center, e.device)
    return _finish(_displacement(c[None], e, t)[:, 0].norm(dim=-1), unbatched)


def pose_errors(est, true, center, radius_mm: float | None = None) -> dict[str, torch.Tensor]:
    """Rotation and translation errors of a pose, and optionally one combined geodesic error.

    Returns a dict of (B,) float64 tensors (0-d for single poses):

    * ``rotation_deg``: `rotation_error_deg`;
    * ``translation_mm``: `translation_error_mm` at ``center``;
    * ``geodesic_mm`` (only when ``radius_mm`` is given): the left-invariant
      SE(3) distance with the rotation weighted by a length,
      ``sqrt((radius_mm * angle_rad)^2 + translation_mm^2)``: a rotation
      counts as the arc length it moves a point ``radius_mm`` away from the
      centre (e.g. the CT's half-extent, or SDD / 2 as in DiffDRR's
      double-geodesic loss).
    """
    rotation = rotation_error_deg(est, true)
    translation = translation_error_mm(est, true, center)
    out = {"rotation_deg": rotation, "translation_mm": translation}
    if radius_mm is not None:
        radius = _positive_threshold(radius_mm, "radius_mm")
        out["geodesic_mm"] = torch.sqrt((radius * torch.deg2rad(rotation)) ** 2 + translation**2)
    return out


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def success_rate(errors, threshold: float) -> float:
    """Fraction of errors strictly below ``threshold`` (> 0); NaN and infinite errors count as failures.

    ``errors``: any array-like or tensor of errors (flattened), at least one.
    """
    threshold = _positive_threshold(threshold)
    arr = _errors_array(errors)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(arr) & (arr < threshold)
    return float(ok.mean())


def summarize(errors, thresholds: Iterable[float] = (1.0, 2.0, 5.0, 10.0)) -> dict:
    """Summary statistics of many registration errors, JSON-ready (plain Python numbers).

    Returns a dict with

    * ``n``: number of errors; ``n_finite``: how many are finite;
    * ``mean``, ``median``, ``p90`` (90th percentile, linear interpolation
      between order statistics), ``max``: over the finite errors only
      (``None`` if there are none), so one diverged run does not turn every
      statistic into NaN; it counts in the success rates instead;
    * ``success_rate``: ``{f"{t:g}": fraction of ALL n errors < t}`` for each
      threshold t (NaN/inf count as failures), e.g. ``{"1": 0.5, "2": 0.75}``.
    """
    thresholds = [_positive_threshold(t, "each threshold") for t in _as_list(thresholds)]
    arr = _errors_array(errors)
    finite = arr[np.isfinite(arr)]
    stats: dict = {"n": int(arr.size), "n_finite": int(finite.size)}
    if finite.size:
        stats.update(
            mean=float(finite.mean()),
            median=float(np.median(finite)),
            p90=float(np.percentile(finite, 90)),
            max=float(finite.max()),
        )
    else:
        stats.update(mean=None, median=None, p90=None, max=None)
    stats["success_rate"] = {f"{t:g}": success_rate(arr, t) for t in thresholds}
    return stats


def _as_list(thresholds) -> Sequence:
    if isinstance(thresholds, (numbers.Real, np.floating, np.integer)) and not isinstance(thresholds, bool):
        return [thresholds]
    if isinstance(thresholds, torch.Tensor):
        return thresholds.reshape(-1).tolist()
    try:
        return list(thresholds)
    except TypeError as exc:
        raise InputError(f"thresholds must be a sequence of positive numbers, got {thresholds!r}") from exc
