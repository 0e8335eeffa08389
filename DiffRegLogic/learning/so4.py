r"""Embedding distances of a learned (siamese) similarity: SO(4) (Chen & Kong), SE(3) and Euclidean.

A siamese network maps the X-ray and the DRR to raw outputs ``(..., N)``;
`embedding` turns them into points of a manifold and the similarity is minus
the distance between the two points. Levenberg-Marquardt wants a residual
vector ``r`` with ``||r||^2 == d^2``: `residual` gives it, `distance_sq`
gives ``d^2`` (computed separately, from the rotation angles).

Kinds (`EMBEDDINGS`)
--------------------
* ``"so4"``: K groups of 8 numbers -> K pairs of unit quaternions
  ``(p, q)`` in S^3 x S^3 -> K rotations ``M(p, q): x -> p x conj(q)`` of R^4
  (x read as a quaternion ``(w, x, y, z)``, Hamilton product).
  Distance: the bi-invariant Riemannian distance ``||log(M_a^T M_b)||_F``,
  summed in squares over the groups. Residual: 6 numbers per group.
* ``"se3"``: K groups of 6 numbers ``(omega [rad], v)``: the rotation
  ``R(omega) = exp([omega]_x)`` and the vector ``v``;
  ``d_k^2 = ||log(R_a^T R_b)||^2 + ||v_b - v_a||^2`` (geodesic of SO(3) x R^3,
  rotation angle in [0, pi]). Residual ``[log(R_a^T R_b), v_b - v_a]``.
* ``"euclidean"`` (ProST): D numbers, residual ``b - a``, ``d^2 = ||b - a||^2``.

Closed form of the SO(4) distance
---------------------------------
1. ``|p x conj(q)| = |x|``, so ``M(p, q)`` is orthogonal; S^3 x S^3 is
   connected and ``M(1, 1) = I``, so ``det M = +1``. From associativity,
   ``M(p1, q1) M(p2, q2) = M(p1 p2, q1 q2)`` and ``M(p, q)^T = M(conj p, conj q)``,
   hence ``M_a^T M_b = M(u, w)`` with the relative quaternions
   ``u = conj(p_a) p_b`` and ``w = conj(q_a) q_b``. ``(p, q)`` and ``(-p, -q)``
   give the same matrix: the map S^3 x S^3 -> SO(4) is a double cover.
2. Write ``u = cos(alpha) + sin(alpha) n``, ``w = cos(beta) + sin(beta) m``
   (n, m unit pure quaternions; ``alpha = atan2(|vec u|, u_0)`` in [0, pi],
   beta likewise). Left multiplication is ``L_u = cos(alpha) I + sin(alpha) J``
   with ``J = L_n``, right multiplication by ``conj(w)`` is
   ``cos(beta) I - sin(beta) K`` with ``K = R_m``; ``J^2 = K^2 = -I``, J and K
   commute and are antisymmetric, so ``JK`` is symmetric with ``(JK)^2 = I``
   and trace 0: R^4 splits into two orthogonal J-invariant planes on which
   ``K = -J`` and ``K = +J``. There ``M(u, w)`` is ``exp((alpha + beta) J)`` and
   ``exp((alpha - beta) J)``: rotations of the two planes by ``alpha + beta``
   and ``alpha - beta``.
3. If ``alpha + beta <= pi`` (then also ``|alpha - beta| <= pi``) the principal
   logarithm is ``(alpha + beta) J`` on the first plane and ``(alpha - beta) J``
   on the second; a plane rotation generator ``theta J`` has squared
   Frobenius norm ``2 theta^2``, so
   ``d^2 = 2 (alpha + beta)^2 + 2 (alpha - beta)^2 = 4 (alpha^2 + beta^2)``.
4. The other lift ``(-u, -w)`` has angles ``(pi - alpha, pi - beta)``; exactly
   one of the two lifts has ``alpha + beta <= pi`` (both on the cut locus
   ``alpha + beta = pi``, where the two values of ``4 (alpha^2 + beta^2)`` agree:
   they differ by ``8 pi (pi - alpha - beta)``). So with the chosen lift
   ``d^2 = 4 (alpha^2 + beta^2) = 4 min over lifts``; ``0 <= d <= 2 pi``.
   (Checked against ``scipy.linalg.logm`` in the tests.)
5. Residual of a group: ``2 [log(u~), log(w~)]`` (6 numbers) for the chosen
   lift ``(u~, w~)``, with the quaternion log ``log(u) = alpha vec(u)/|vec u|``
   (a 3-vector of length alpha): ``||r_k||^2 = 4 (alpha^2 + beta^2) = d_k^2``.

Smoothness: ``log(u) = f vec(u)`` with ``f = atan2(n, s) / n`` (``n = |vec u|``,
``s = u_0``), replaced by its series ``1/s - n^2 / (3 s^3)`` for
``n < eps^(1/4) s`` (the next term is below rounding), with `torch.where`
and safe denominators, so the residual, ``d^2`` and their gradients are finite
everywhere, identical inputs included. The residual jumps where the lift
changes, on the cut locus ``alpha + beta = pi`` (d^2 is continuous there);
at ``u = -1`` exactly, the log of a half turn takes the axis (1, 0, 0).
Only the direction of each quaternion matters to `residual` and
`distance_sq` (angles are ratios), so they accept unnormalised pairs too.

All functions are batched over leading dimensions (a and b broadcast), keep
dtype and device, and are differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.rigid import so3_exp, so3_log

__all__ = [
    "EMBEDDINGS",
    "group_size",
    "quaternion_multiply",
    "quaternion_conjugate",
    "unit_quaternion_pairs",
    "so4_matrix",
    "embedding",
    "residual",
    "distance_sq",
    "residual_size",
]

EMBEDDINGS = ("so4", "se3", "euclidean")
"""The embedding kinds, paper's first."""

_GROUP = {"so4": 8, "se3": 6, "euclidean": 1}
_RESIDUAL = {"so4": 6, "se3": 6, "euclidean": 1}
_NORM_EPS = 1e-12
"""Floor of the quaternion norm in `unit_quaternion_pairs`."""


def _check_kind(kind) -> str:
    if not isinstance(kind, str) or kind not in _GROUP:
        raise InputError(f"unknown embedding kind {kind!r}: use one of {', '.join(EMBEDDINGS)}")
    return kind


def _check_tensor(x, name: str, min_ndim: int = 1) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise InputError(f"{name} must be a floating-point torch tensor, got {what}")
    if x.ndim < min_ndim:
        raise InputError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")


def group_size(kind: str) -> int:
    """Raw outputs per group: 8 (so4: two quaternions), 6 (se3: omega, v), 1 (euclidean)."""
    return _GROUP[_check_kind(kind)]


def _groups(n_outputs: int, kind: str) -> int:
    size = group_size(kind)
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, (int, np.integer)):
        raise InputError(f"the number of network outputs must be an integer, got {n_outputs!r}")
    if n_outputs <= 0 or n_outputs % size:
        raise InputError(f"a {kind!r} embedding needs a positive multiple of {size} outputs, got {n_outputs}: "
                         f"set the network's output size to {size} x the number of groups")
    return int(n_outputs) // size


def residual_size(n_outputs: int, kind: str) -> int:
    """Length M of the residual for N = ``n_outputs`` raw outputs: so4 6K (N = 8K), se3 N (= 6K), euclidean N."""
    return _RESIDUAL[kind] * _groups(n_outputs, kind)


# --------------------------------------------------------------------------
# Quaternions (w, x, y, z), Hamilton product
# --------------------------------------------------------------------------


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a b`` of quaternions (w, x, y, z), (..., 4) x (..., 4) -> (..., 4) (broadcast)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def quaternion_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Conjugate ``(w, -x, -y, -z)`` of quaternions (..., 4); the inverse of a unit quaternion."""
    return torch.cat([q[..., :1], -q[..., 1:]], -1)


def unit_quaternion_pairs(raw: torch.Tensor) -> torch.Tensor:
    """Raw outputs (..., 8K) -> K pairs of unit quaternions (..., K, 2, 4): ``[..., k, 0] = p``, ``[..., k, 1] = q``.

    Each group of 8 is read as ``p = raw[0:4]``, ``q = raw[4:8]`` (w first),
    each divided by its norm (floored at 1e-12, so an all-zero output stays 0
    instead of NaN).
    """
    _check_tensor(raw, "raw so4 output")
    k = _groups(raw.shape[-1], "so4")
    pairs = raw.reshape(*raw.shape[:-1], k, 2, 4)
    return pairs / pairs.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)


def so4_matrix(pairs: torch.Tensor) -> torch.Tensor:
    """Matrices (..., K, 4, 4) of ``x -> p x conj(q)`` for pairs (..., K, 2, 4); ``M[:, i]`` is the image of e_i.

    ``M = L(p) R(conj q)``, the left-multiplication matrix of p times the
    right-multiplication matrix of conj(q); orthogonal with det +1 for unit p, q.
    """
    _check_pairs(pairs, "pairs")
    a, b, c, d = pairs[..., 0, :].unbind(-1)
    e, f, g, h = quaternion_conjugate(pairs[..., 1, :]).unbind(-1)
    left = torch.stack([torch.stack([a, -b, -c, -d], -1), torch.stack([b, a, -d, c], -1),
                        torch.stack([c, d, a, -b], -1), torch.stack([d, -c, b, a], -1)], -2)
    right = torch.stack([torch.stack([e, -f, -g, -h], -1), torch.stack([f, e, h, -g], -1),
                         torch.stack([g, -h, e, f], -1), torch.stack([h, g, -f, e], -1)], -2)
    return left @ right


def _check_pairs(x, name: str) -> None:
    _check_tensor(x, name)
    if x.ndim < 3 or tuple(x.shape[-2:]) != (2, 4):
        raise InputError(f"{name} must be quaternion pairs of shape (..., K, 2, 4), got {tuple(x.shape)}: "
                         "pass the output of embedding(raw, 'so4')")


# --------------------------------------------------------------------------
# Embeddings, residuals, distances
# --------------------------------------------------------------------------


def embedding(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """The network's raw output (..., N) -> its embedding.

    so4: unit quaternion pairs (..., K, 2, 4) (N = 8K); se3: groups (..., K, 6)
    (N = 6K); euclidean: ``raw`` unchanged (..., N).
    """
    _check_kind(kind)
    _check_tensor(raw, f"raw {kind} output")
    if kind == "so4":
        return unit_quaternion_pairs(raw)
    k = _groups(raw.shape[-1], kind)
    return raw.reshape(*raw.shape[:-1], k, 6) if kind == "se3" else raw


def _check_embeddings(a, b, kind: str) -> None:
    _check_kind(kind)
    if kind == "so4":
        _check_pairs(a, "embedding a")
        _check_pairs(b, "embedding b")
        core = 3
    else:
        core = 2 if kind == "se3" else 1
        for x, name in ((a, "embedding a"), (b, "embedding b")):
            _check_tensor(x, name, core)
            if kind == "se3" and x.shape[-1] != 6:
                raise InputError(f"{name} must be se3 groups of shape (..., K, 6), got {tuple(x.shape)}: "
                                 "pass the output of embedding(raw, 'se3')")
    if tuple(a.shape[-core:]) != tuple(b.shape[-core:]):
        raise InputError(f"{kind} embeddings a {tuple(a.shape)} and b {tuple(b.shape)} differ in size: "
                         "both must come from the same network")
    try:
        np.broadcast_shapes(tuple(a.shape[:-core]), tuple(b.shape[:-core]))
    except ValueError:
        raise InputError(f"batch shapes of embeddings a {tuple(a.shape)} and b {tuple(b.shape)} "
                         "do not broadcast") from None


def _safe_norm(n2: torch.Tensor) -> torch.Tensor:
    """sqrt(n2) for n2 >= 0, with gradient 0 (not NaN) at 0."""
    positive = n2 > 0
    return torch.where(positive, torch.where(positive, n2, torch.ones_like(n2)).sqrt(), torch.zeros_like(n2))


def _quaternion_log(q: torch.Tensor) -> torch.Tensor:
    """``atan2(|vec q|, q_0) vec q / |vec q|`` (..., 4) -> (..., 3), smooth and with finite gradient at q = 1."""
    s, v = q[..., 0], q[..., 1:]
    n2 = (v * v).sum(-1)
    limit = torch.finfo(q.dtype).eps ** 0.25  # series error (n/s)^4 / 5 is below rounding
    small = (s > 0) & (n2 < (limit * limit) * (s * s))
    s_series = torch.where(small, s, torch.ones_like(s))
    zero = n2 == 0
    n = torch.where(small | zero, torch.ones_like(n2), n2).sqrt()
    ratio = torch.where(small, 1 / s_series - n2 / (3 * s_series**3), torch.atan2(n, s) / n)
    log = ratio[..., None] * v
    # u = -1 (a half turn with no axis): any axis will do; take (1, 0, 0) so that |log| stays pi
    half_turn = zero & ~small & (s < 0)
    axis = torch.zeros_like(v)
    axis[..., 0] = math.pi
    return torch.where(half_turn[..., None], axis, log)


def _relative_so4(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen lift (u~, w~) (..., K, 4) each, of ``M_a^T M_b = M(u, w)``: ``alpha + beta <= pi``."""
    u = quaternion_multiply(quaternion_conjugate(a[..., 0, :]), b[..., 0, :])
    w = quaternion_multiply(quaternion_conjugate(a[..., 1, :]), b[..., 1, :])
    with torch.no_grad():
        alpha = torch.atan2(u[..., 1:].norm(dim=-1), u[..., 0])
        beta = torch.atan2(w[..., 1:].norm(dim=-1), w[..., 0])
        sign = torch.where(alpha + beta > math.pi, -1.0, 1.0).to(u.dtype)[..., None]
    return u * sign, w * sign


def residual(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Residual (..., M) between embeddings a and b (from `embedding`), with ``||r||^2 == d(a, b)^2``.

    so4: per group ``2 [log(u~), log(w~)]`` (M = 6K, radians); se3: per group
    ``[log(R_a^T R_b) (rad), v_b - v_a]`` (M = 6K); euclidean: ``b - a`` (M = D).
    """
    _check_embeddings(a, b, kind)
    if kind == "euclidean":
        return b - a
    if kind == "so4":
        u, w = _relative_so4(a, b)
        groups = 2 * torch.cat([_quaternion_log(u), _quaternion_log(w)], -1)
    else:
        a, b = torch.broadcast_tensors(a, b)
        rotation = so3_exp(a[..., :3]).transpose(-1, -2) @ so3_exp(b[..., :3])
        groups = torch.cat([so3_log(rotation), b[..., 3:] - a[..., 3:]], -1)
    return groups.reshape(*groups.shape[:-2], -1)


def distance_sq(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Squared embedding distance ``d^2`` (...) between embeddings a and b, summed over the groups.

    so4: ``sum_k 4 (alpha_k^2 + beta_k^2)`` from the angles of the chosen lift
    (= ``||log(M_a^T M_b)||_F^2`` summed; rad^2); se3 and euclidean: the sum of
    squares of `residual`. The gradient is finite everywhere (0 at a = b).
    """
    _check_embeddings(a, b, kind)
    if kind != "so4":
        return (residual(a, b, kind) ** 2).sum(-1)
    u, w = _relative_so4(a, b)
    alpha = torch.atan2(_safe_norm((u[..., 1:] ** 2).sum(-1)), u[..., 0])
    beta = torch.atan2(_safe_norm((w[..., 1:] ** 2).sum(-1)), w[..., 0])
    return (4 * (alpha**2 + beta**2)).sum(-1)
