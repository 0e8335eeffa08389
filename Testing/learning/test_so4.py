"""Embedding distances of the learned similarity (DiffRegLogic.learning.so4) against independent truths.

SO(4): the Frobenius norm of scipy.linalg.logm of matrices built here in
numpy (scalar/vector quaternion product); SE(3): scipy's rotation vectors and
arccos((trace - 1) / 2); gradients: torch.autograd.gradcheck.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.transform import Rotation

from DiffRegLogic.errors import InputError
from DiffRegLogic.learning import so4
from DiffRegLogic.learning.so4 import (EMBEDDINGS, distance_sq, embedding, group_size, quaternion_conjugate,
                                       quaternion_multiply, residual, residual_size, so4_matrix,
                                       unit_quaternion_pairs)

# ---------------------------------------------------------------- numpy reference


def np_qmul(a, b):
    """Hamilton product in scalar/vector form: (s1 s2 - v1.v2, s1 v2 + s2 v1 + v1 x v2)."""
    s1, v1, s2, v2 = a[..., 0], a[..., 1:], b[..., 0], b[..., 1:]
    scalar = s1 * s2 - (v1 * v2).sum(-1)
    vector = s1[..., None] * v2 + s2[..., None] * v1 + np.cross(v1, v2)
    return np.concatenate([scalar[..., None], vector], -1)


def np_conj(q):
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def np_matrix(p, q):
    """4x4 matrix of x -> p x conj(q), column i the image of e_i."""
    return np.stack([np_qmul(np_qmul(p, e), np_conj(q)) for e in np.eye(4)], -1)


def logm_distance_sq(pa, qa, pb, qb):
    """||logm(M_a^T M_b)||_F^2 with scipy."""
    log = scipy.linalg.logm(np_matrix(pa, qa).T @ np_matrix(pb, qb))
    assert np.abs(np.imag(log)).max() < 1e-8
    return float(np.sum(np.real(log) ** 2))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def quaternion_of_angle(rng, angle):
    """A unit quaternion of angle ``angle`` (cos angle, sin angle n) about a random axis n."""
    return np.concatenate([[math.cos(angle)], math.sin(angle) * unit(rng.normal(size=3))])


def pairs_tensor(p, q):
    """numpy p, q (..., K, 4) -> torch pairs (..., K, 2, 4)."""
    return torch.from_numpy(np.stack([p, q], -2))


def close(actual, expected, rtol=1e-7, atol=1e-12):
    """assert_allclose on tensors (torch.testing.assert_close costs a second on its first call)."""
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol)


def raw_points(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- SO(4) distance


def random_cases(rng):
    """(pa, qa, pb, qb) single-group cases: generic, near the alpha + beta = pi boundary, near-identical."""
    cases = []
    for _ in range(30):
        cases.append(tuple(unit(rng.normal(size=4)) for _ in range(4)))
    for offset in (-1e-2, -1e-3, -1e-5, 1e-5, 1e-3, 1e-2, -0.3, 0.3):
        alpha = rng.uniform(0.2, 2.8)
        beta = math.pi + offset - alpha
        pa, qa = unit(rng.normal(size=4)), unit(rng.normal(size=4))
        cases.append((pa, qa, np_qmul(pa, quaternion_of_angle(rng, alpha)),
                      np_qmul(qa, quaternion_of_angle(rng, beta))))
    for step in (1e-2, 1e-4, 1e-5, 1e-6, 1e-7, 3e-3, 3e-5, 3e-7, 0.05, 0.1, 1e-3, 2e-4):
        pa, qa = unit(rng.normal(size=4)), unit(rng.normal(size=4))
        cases.append((pa, qa, unit(pa + step * rng.normal(size=4)), unit(qa + step * rng.normal(size=4))))
    return cases


def test_so4_distance_is_the_frobenius_norm_of_the_matrix_log():
    rng = np.random.default_rng(17)
    cases = random_cases(rng)
    assert len(cases) >= 50
    truth = np.array([logm_distance_sq(*c) for c in cases])
    a = pairs_tensor(np.stack([c[0] for c in cases])[:, None], np.stack([c[1] for c in cases])[:, None])
    b = pairs_tensor(np.stack([c[2] for c in cases])[:, None], np.stack([c[3] for c in cases])[:, None])
    d2 = distance_sq(a, b, "so4").numpy()
    r2 = (residual(a, b, "so4") ** 2).sum(-1).numpy()
    np.testing.assert_allclose(np.sqrt(d2), np.sqrt(truth), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(r2, d2, rtol=1e-12, atol=1e-15)
    assert truth.max() > 20 and truth.min() < 1e-10  # the cases span near-identical to near the cut locus


def test_so4_distance_of_several_groups_is_the_sum_of_squares():
    rng = np.random.default_rng(3)
    batch, k = 2, 3
    p_a, q_a, p_b, q_b = (unit(rng.normal(size=(batch, k, 4))) for _ in range(4))
    truth = np.array([[logm_distance_sq(p_a[i, j], q_a[i, j], p_b[i, j], q_b[i, j]) for j in range(k)]
                      for i in range(batch)]).sum(-1)
    a, b = pairs_tensor(p_a, q_a), pairs_tensor(p_b, q_b)
    np.testing.assert_allclose(distance_sq(a, b, "so4").numpy(), truth, rtol=1e-9)
    assert residual(a, b, "so4").shape == (batch, 6 * k)


def test_so4_closed_form_by_angles():
    # build b from a with given relative angles: d^2 = 4 (alpha^2 + beta^2) for alpha + beta <= pi
    rng = np.random.default_rng(5)
    for alpha, beta in ((0.3, 0.5), (1.0, 2.0), (2.5, 0.4), (2.0, 2.0), (3.0, 3.0)):
        pa, qa = unit(rng.normal(size=4)), unit(rng.normal(size=4))
        pb, qb = np_qmul(pa, quaternion_of_angle(rng, alpha)), np_qmul(qa, quaternion_of_angle(rng, beta))
        if alpha + beta > math.pi:
            alpha, beta = math.pi - alpha, math.pi - beta
        d2 = float(distance_sq(pairs_tensor(pa[None], qa[None]), pairs_tensor(pb[None], qb[None]), "so4"))
        assert d2 == pytest.approx(4 * (alpha**2 + beta**2), rel=1e-12)


def test_so4_symmetric_zero_and_sign_invariant():
    g = torch.Generator().manual_seed(0)
    a = embedding(raw_points(g, 6, 16), "so4")
    b = embedding(raw_points(g, 6, 16), "so4")
    d2 = distance_sq(a, b, "so4")
    assert (d2 > 0.1).all()
    close(distance_sq(b, a, "so4"), d2, rtol=1e-13, atol=0)
    close(residual(b, a, "so4"), -residual(a, b, "so4"), rtol=0, atol=1e-13)
    assert distance_sq(a, a, "so4").abs().max() < 1e-12
    assert residual(a, a, "so4").abs().max() < 1e-12
    # (p, q) -> (-p, -q) is the same rotation, on either side and on one group only
    flip = torch.tensor([-1.0, 1.0], dtype=torch.float64)[:, None, None]
    close(distance_sq(-a, b, "so4"), d2, rtol=1e-12, atol=0)
    close(distance_sq(a, b * flip, "so4"), d2, rtol=1e-12, atol=0)
    close(distance_sq(-a, -b, "so4"), d2, rtol=1e-12, atol=0)


def test_so4_minus_the_rotation_is_at_the_largest_distance():
    # (p, q) vs (-p, q): M vs -M, M^T (-M) = -I turns both planes by pi: d^2 = 2 pi^2 + 2 pi^2 (u = -1 exactly)
    g = torch.Generator().manual_seed(1)
    a = embedding(raw_points(g, 3, 8), "so4")
    b = a * torch.tensor([-1.0, 1.0], dtype=torch.float64)[:, None]
    close(so4_matrix(b), -so4_matrix(a))
    expected = torch.full((3,), 4 * math.pi**2, dtype=torch.float64)
    close(distance_sq(a, b, "so4"), expected)
    close((residual(a, b, "so4") ** 2).sum(-1), expected)


def test_so4_bi_invariance_as_quaternion_products():
    g = torch.Generator().manual_seed(2)
    a, b, h = (embedding(raw_points(g, 5, 24), "so4") for _ in range(3))
    ma, mh = so4_matrix(a), so4_matrix(h)

    def product(x, y):
        # M(p1, q1) M(p2, q2) = M(p1 p2, q1 q2)
        return quaternion_multiply(x, y)

    close(so4_matrix(product(h, a)), mh @ ma)  # left: M_g M_a
    close(so4_matrix(product(a, h)), ma @ mh)  # right: M_a M_g
    d2 = distance_sq(a, b, "so4")
    close(distance_sq(product(h, a), product(h, b), "so4"), d2, rtol=1e-11, atol=0)
    close(distance_sq(product(a, h), product(b, h), "so4"), d2, rtol=1e-11, atol=0)


# ---------------------------------------------------------------- quaternions and matrices


def test_quaternion_product_is_hamiltons_and_composes_rotations():
    one, i, j, k = torch.eye(4, dtype=torch.float64)
    close(quaternion_multiply(i, j), k)
    close(quaternion_multiply(j, k), i)
    close(quaternion_multiply(k, i), j)
    close(quaternion_multiply(i, i), -one)
    rng = np.random.default_rng(8)
    a, b = unit(rng.normal(size=(10, 4))), unit(rng.normal(size=(10, 4)))
    ab = quaternion_multiply(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    composed = (Rotation.from_quat(a, scalar_first=True) * Rotation.from_quat(b, scalar_first=True)).as_matrix()
    np.testing.assert_allclose(Rotation.from_quat(ab, scalar_first=True).as_matrix(), composed, atol=1e-12)
    np.testing.assert_allclose(ab, np_qmul(a, b), atol=1e-14)
    np.testing.assert_allclose(quaternion_conjugate(torch.from_numpy(a)).numpy(), np_conj(a))


def test_so4_matrix_is_a_rotation_matching_the_definition():
    g = torch.Generator().manual_seed(4)
    pairs = embedding(raw_points(g, 7, 16), "so4")
    m = so4_matrix(pairs)
    assert m.shape == (7, 2, 4, 4)
    eye = torch.eye(4, dtype=torch.float64)
    close(m.transpose(-1, -2) @ m, eye.expand_as(m))
    close(torch.linalg.det(m), torch.ones(7, 2, dtype=torch.float64))
    x = raw_points(g, 7, 2, 4)
    p, q = pairs[..., 0, :], pairs[..., 1, :]
    image = quaternion_multiply(quaternion_multiply(p, x), quaternion_conjugate(q))
    close((m @ x[..., None])[..., 0], image)
    np.testing.assert_allclose(m.numpy(), np_matrix(p.numpy(), q.numpy()), atol=1e-14)


def test_unit_quaternion_pairs_layout():
    g = torch.Generator().manual_seed(6)
    raw = raw_points(g, 3, 16)
    pairs = unit_quaternion_pairs(raw)
    assert pairs.shape == (3, 2, 2, 4)
    close(pairs.norm(dim=-1), torch.ones(3, 2, 2, dtype=torch.float64))
    close(pairs[:, 1, 0] * raw[:, 8:12].norm(dim=-1, keepdim=True), raw[:, 8:12])
    assert torch.isfinite(unit_quaternion_pairs(torch.zeros(16, dtype=torch.float64))).all()


# ---------------------------------------------------------------- SE(3) and Euclidean


def test_se3_is_the_geodesic_of_so3_times_r3():
    rng = np.random.default_rng(9)
    batch, k = 12, 2
    raw_a = rng.normal(size=(batch, 6 * k))
    raw_b = raw_a + rng.normal(size=(batch, 6 * k))
    ga, gb = raw_a.reshape(batch, k, 6), raw_b.reshape(batch, k, 6)
    ra = Rotation.from_rotvec(ga[..., :3].reshape(-1, 3)).as_matrix()
    rb = Rotation.from_rotvec(gb[..., :3].reshape(-1, 3)).as_matrix()
    rel = np.transpose(ra, (0, 2, 1)) @ rb
    angle = np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)).reshape(batch, k)
    assert angle.min() > 0.05 and angle.max() < math.pi - 0.05  # arccos is accurate here
    truth = (angle**2 + ((gb[..., 3:] - ga[..., 3:]) ** 2).sum(-1)).sum(-1)
    a, b = embedding(torch.from_numpy(raw_a), "se3"), embedding(torch.from_numpy(raw_b), "se3")
    assert a.shape == (batch, k, 6)
    np.testing.assert_allclose(distance_sq(a, b, "se3").numpy(), truth, rtol=1e-9)
    r = residual(a, b, "se3").numpy().reshape(batch, k, 6)
    np.testing.assert_allclose(r[..., :3].reshape(-1, 3), Rotation.from_matrix(rel).as_rotvec(), atol=1e-10)
    np.testing.assert_allclose(r[..., 3:], gb[..., 3:] - ga[..., 3:], atol=1e-14)


def test_euclidean_is_the_difference():
    g = torch.Generator().manual_seed(10)
    a, b = raw_points(g, 4, 5), raw_points(g, 4, 5)
    assert embedding(a, "euclidean") is a
    close(residual(a, b, "euclidean"), b - a)
    np.testing.assert_allclose(distance_sq(a, b, "euclidean").numpy(), ((b.numpy() - a.numpy()) ** 2).sum(-1))


@pytest.mark.parametrize("kind, n", [("so4", 24), ("se3", 18), ("euclidean", 7)])
def test_residual_squared_is_the_distance(kind, n):
    g = torch.Generator().manual_seed(11)
    a, b = embedding(raw_points(g, 2, 3, n), kind), embedding(raw_points(g, 2, 3, n), kind)
    r = residual(a, b, kind)
    assert r.shape == (2, 3, residual_size(n, kind))
    close((r**2).sum(-1), distance_sq(a, b, kind), rtol=1e-12, atol=1e-14)
    # a single embedding broadcasts against a batch
    close(distance_sq(a[0, 0], b, kind), distance_sq(a[:1, :1].expand_as(a), b, kind))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind, n", [("so4", 16), ("se3", 12), ("euclidean", 5)])
def test_gradients_finite_at_identical_inputs(kind, n):
    g = torch.Generator().manual_seed(12)
    raw = raw_points(g, 2, n)
    ra, rb = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    ea, eb = embedding(ra, kind), embedding(rb, kind)
    jac = torch.autograd.functional.jacobian(lambda x, y: residual(embedding(x, kind), embedding(y, kind), kind),
                                             (ra, rb))
    assert all(torch.isfinite(j).all() for j in jac)
    assert jac[1].abs().sum() > 0  # the residual moves at a = b (Gauss-Newton needs it)
    grads = torch.autograd.grad(distance_sq(ea, eb, kind).sum(), (ra, rb))
    assert all(torch.isfinite(x).all() and x.abs().max() < 1e-12 for x in grads)  # minimum of d^2


@pytest.mark.parametrize("kind, n", [("so4", 8), ("se3", 6), ("euclidean", 5)])
@pytest.mark.parametrize("separation", [1.0, 1e-4, 0.0])
def test_gradcheck(kind, n, separation):
    # 1e-4 lies at the series switch of the quaternion log; 0 checks the Jacobian at a = b
    g = torch.Generator().manual_seed(13)
    ra = raw_points(g, 1, n).requires_grad_()
    rb = (ra.detach() + separation * raw_points(g, 1, n)).requires_grad_()

    def res(x, y):
        return residual(embedding(x, kind), embedding(y, kind), kind)

    def dist(x, y):
        return distance_sq(embedding(x, kind), embedding(y, kind), kind)

    assert torch.autograd.gradcheck(res, (ra, rb))
    assert torch.autograd.gradcheck(dist, (ra, rb))


def test_quaternion_log_accurate_across_the_series_switch():
    # angle atan2(n, 1) * direction, in float32 and float64, from 1e-9 rad to 0.2 rad
    angles = np.geomspace(1e-9, 0.2, 200)
    axis = unit(np.array([0.3, -0.5, 0.8]))
    q = np.concatenate([np.cos(angles)[:, None], np.sin(angles)[:, None] * axis], -1)
    truth = angles[:, None] * axis
    for dtype in (torch.float64, torch.float32):
        log = so4._quaternion_log(torch.from_numpy(q).to(dtype)).double().numpy()
        relative = np.linalg.norm(log - truth, axis=-1) / angles
        assert relative.max() < 8 * torch.finfo(dtype).eps, (dtype, relative.max())


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_lower_precision_agrees_with_float64(dtype, rtol):
    g = torch.Generator().manual_seed(14)
    a, b = raw_points(g, 4, 24), raw_points(g, 4, 24)
    for kind in EMBEDDINGS:
        d64 = distance_sq(embedding(a, kind), embedding(b, kind), kind)
        ea, eb = embedding(a.to(dtype), kind), embedding(b.to(dtype), kind)
        d, r = distance_sq(ea, eb, kind), residual(ea, eb, kind)
        assert d.dtype == r.dtype == dtype
        close(d.double(), d64, rtol=rtol, atol=rtol)
        close((r.double() ** 2).sum(-1), d64, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------- sizes and bad input


def test_sizes():
    assert [group_size(kind) for kind in EMBEDDINGS] == [8, 6, 1]
    assert residual_size(32, "so4") == 24 and residual_size(12, "se3") == 12 and residual_size(9, "euclidean") == 9


def test_bad_input():
    x = torch.zeros(2, 16, dtype=torch.float64)
    with pytest.raises(InputError, match="so4, se3, euclidean"):
        group_size("quaternion")
    with pytest.raises(InputError, match="so4, se3, euclidean"):
        embedding(x, "SO4")
    with pytest.raises(InputError, match="multiple of 8"):
        embedding(torch.zeros(2, 12), "so4")
    with pytest.raises(InputError, match="multiple of 6"):
        embedding(torch.zeros(2, 8), "se3")
    with pytest.raises(InputError, match="multiple of 8"):
        residual_size(0, "so4")
    with pytest.raises(InputError, match="integer"):
        residual_size(8.0, "so4")
    with pytest.raises(InputError, match="floating-point"):
        embedding(torch.zeros(2, 16, dtype=torch.int64), "so4")
    with pytest.raises(InputError, match="floating-point"):
        embedding(np.zeros((2, 16)), "euclidean")
    pairs = embedding(x + 1, "so4")
    with pytest.raises(InputError, match=r"\(\.\.\., K, 2, 4\)"):
        residual(x, pairs, "so4")  # raw output instead of the embedding
    with pytest.raises(InputError, match="differ in size"):
        distance_sq(pairs, pairs[:, :1], "so4")
    with pytest.raises(InputError, match="do not broadcast"):
        distance_sq(pairs, torch.cat([pairs] * 3), "so4")
    with pytest.raises(InputError, match=r"\(\.\.\., K, 6\)"):
        residual(torch.zeros(2, 5), torch.zeros(2, 5), "se3")
    with pytest.raises(InputError, match="differ in size"):
        residual(torch.zeros(2, 5), torch.zeros(2, 4), "euclidean")
    with pytest.raises(InputError, match=r"\(\.\.\., K, 2, 4\)"):
        so4_matrix(torch.zeros(2, 4, 2))
