"""The pose network's losses (`DiffRegLogic.learning.losses`).

Truth: `scipy.ndimage.sobel` (mode "nearest" = replicate padding) for the
decoder's target, and the ramp's closed form (constant gradient inside);
SSIM computed in numpy by an explicit loop over window positions, and its
closed form for two constant images; pose losses in closed form (a 10 deg
rotation about z and a 3-4-0 mm translation: poster = 10 + 5) and with
scipy's `Rotation` for the geodesic angle; gradients against finite
differences (`torch.autograd.gradcheck`, float64) near the identity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.rigid import so3_exp
from DiffRegLogic.learning.losses import pose_loss, sobel_magnitude, ssim, structure_loss
from DiffRegLogic.learning.rotations import IDENTITY_6D, rotation_6d_to_matrix


def _scipy_sobel_magnitude(image: np.ndarray) -> np.ndarray:
    gx = ndimage.sobel(image, axis=1, mode="nearest")
    gy = ndimage.sobel(image, axis=0, mode="nearest")
    m = np.hypot(gx, gy)
    return m / (m.max() + 1e-8)


def _ramp_and_disc() -> np.ndarray:
    rows, cols = np.mgrid[0:24, 0:30].astype(np.float64)
    ramp = 2.0 * cols + 3.0 * rows
    disc = ((rows - 11.3) ** 2 + (cols - 14.6) ** 2 < 7.5**2).astype(np.float64) * 4.0
    return np.stack([ramp, disc])


def test_sobel_magnitude_equals_scipy():
    images = _ramp_and_disc()
    got = sobel_magnitude(torch.from_numpy(images)[:, None])
    assert got.shape == (2, 1, 24, 30)
    for i in range(2):
        np.testing.assert_allclose(got[i, 0].numpy(), _scipy_sobel_magnitude(images[i]), atol=1e-12)
    # ramp: the full Sobel response (8 * gradient) inside, its maximum, so 1 after normalisation
    np.testing.assert_allclose(got[0, 0, 1:-1, 1:-1].numpy(), 1.0, atol=1e-8)
    assert got.min() >= 0 and got.max() <= 1


def test_sobel_magnitude_is_normalised_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g, dtype=torch.float64)
    scaled = x * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)[:, None, None, None] + 2.0
    torch.testing.assert_close(sobel_magnitude(scaled), sobel_magnitude(x), atol=1e-7, rtol=0)
    torch.testing.assert_close(sobel_magnitude(x).amax(dim=(-2, -1)), torch.ones(3, 1, dtype=torch.float64),
                               atol=1e-7, rtol=0)
    flat = sobel_magnitude(torch.full((1, 1, 8, 8), 3.0))
    assert torch.equal(flat, torch.zeros_like(flat))


def _numpy_ssim(a: np.ndarray, b: np.ndarray, window: int, sigma: float) -> float:
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-x**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for r in range(a.shape[0] - window + 1):
        for c in range(a.shape[1] - window + 1):
            pa, pb = a[r:r + window, c:c + window], b[r:r + window, c:c + window]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("window", [7, 11])
def test_ssim_matches_a_direct_computation(window):
    rng = np.random.default_rng(1)
    a = rng.random((2, 20, 17))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], window=window)
    expected = [_numpy_ssim(a[i], b[i], window, 1.5) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert 0.0 < got.min() and got.max() < 0.95


def test_ssim_identical_and_constant_images():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 24, 24, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    a, b = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64), torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.7 + c1) / (0.5**2 + 0.7**2 + c1)  # variances and covariance are 0
    assert abs(ssim(a, b).item() - expected) < 1e-12
    assert abs(structure_loss(a, b).item() - (0.2 + 1 - expected)) < 1e-12
    assert structure_loss(x, x).item() == pytest.approx(0.0, abs=1e-12)


def _identity_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(3, dtype=torch.float64).expand(n, 3, 3), torch.zeros(n, 3, dtype=torch.float64)


def test_pose_loss_closed_forms():
    rz10 = so3_exp(torch.tensor([[0.0, 0.0, math.radians(10.0)]], dtype=torch.float64))
    t = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    eye, zero = _identity_batch(1)
    assert pose_loss(rz10, t, eye, zero, kind="poster").item() == pytest.approx(15.0, abs=1e-10)
    assert pose_loss(eye, zero, rz10, t, kind="poster").item() == pytest.approx(15.0, abs=1e-10)
    geodesic = pose_loss(rz10, t, eye, zero, kind="geodesic", length_mm=100.0).item()
    assert geodesic == pytest.approx(100.0 * math.radians(10.0) + 5.0, abs=1e-10)
    # batch mean: a second, exact prediction halves it
    both = pose_loss(torch.cat([rz10, eye]), torch.cat([t, zero]), _identity_batch(2)[0], _identity_batch(2)[1])
    assert both.item() == pytest.approx(7.5, abs=1e-10)


def test_pose_loss_poster_and_geodesic_differ_as_expected():
    deg = math.radians(10.0)
    rx = so3_exp(torch.tensor([[deg, 0.0, 0.0]], dtype=torch.float64))
    ry = so3_exp(torch.tensor([[0.0, deg, 0.0]], dtype=torch.float64))
    zero = torch.zeros(1, 3, dtype=torch.float64)
    poster = pose_loss(rx, zero, ry, zero, kind="poster").item()
    assert poster == pytest.approx(10.0 * math.sqrt(2.0), abs=1e-9)
    angle = (Rotation.from_rotvec([deg, 0, 0]).inv() * Rotation.from_rotvec([0, deg, 0])).magnitude()
    geodesic = pose_loss(rx, zero, ry, zero, kind="geodesic", length_mm=50.0).item()
    assert geodesic == pytest.approx(50.0 * angle, abs=1e-9)
    # 20 deg about z vs 30 deg about z: the rotation vectors differ by 10 deg
    rz20 = so3_exp(torch.tensor([[0.0, 0.0, 2 * deg]], dtype=torch.float64))
    rz30 = so3_exp(torch.tensor([[0.0, 0.0, 3 * deg]], dtype=torch.float64))
    assert pose_loss(rz30, zero, rz20, zero).item() == pytest.approx(10.0, abs=1e-9)


def test_pose_loss_casts_the_truth_to_the_prediction():
    eye, zero = _identity_batch(2)
    pred_t = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], dtype=torch.float32)
    loss = pose_loss(eye.float(), pred_t, eye, zero)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(3.0)


@pytest.mark.parametrize("kind", ["poster", "geodesic"])
def test_pose_loss_gradcheck_near_identity(kind):
    g = torch.Generator().manual_seed(3)
    true_rotation = so3_exp(1e-3 * torch.randn(2, 3, generator=g, dtype=torch.float64))
    true_t = torch.randn(2, 3, generator=g, dtype=torch.float64)
    six = (torch.tensor(IDENTITY_6D, dtype=torch.float64) + 1e-3 * torch.randn(2, 6, generator=g,
                                                                             dtype=torch.float64)).requires_grad_()
    t = (true_t + torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_()

    def f(six, t):
        return pose_loss(rotation_6d_to_matrix(six), t, true_rotation, true_t, kind=kind, length_mm=20.0)

    assert torch.autograd.gradcheck(f, (six, t), eps=1e-7, atol=1e-6)


def test_structure_gradcheck():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sobel_magnitude(x), (image,), eps=1e-6, atol=1e-6)
    target = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64)
    recon = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda r: structure_loss(r, target, window=7), (recon,), eps=1e-6, atol=1e-6)


def test_bad_input_is_refused():
    eye, zero = _identity_batch(2)
    with pytest.raises(InputError, match="kind must be one of"):
        pose_loss(eye, zero, eye, zero, kind="l2")
    with pytest.raises(InputError, match=r"translation must be \(B, 3\)"):
        pose_loss(eye, zero[:1], eye, zero)
    with pytest.raises(InputError, match="length_mm"):
        pose_loss(eye, zero, eye, zero, kind="geodesic", length_mm=0.0)
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        sobel_magnitude(torch.zeros(8, 8))
    with pytest.raises(InputError, match="does not fit"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="same shape"):
        structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
