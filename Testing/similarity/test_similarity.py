"""Similarity measures against hand arithmetic and independent numpy / scipy references.

The references here are written from the definitions (Pearson correlation via
numpy, SSIM with explicit loops over windows, Parzen MI with loops over
pixels), not by calling into DiffRegLogic.similarity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from DiffRegLogic import InputError
from DiffRegLogic import similarity as sim

F64 = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def smooth_pair(shape=(24, 26), seed=0, noise=0.4, batch=None):
    """A smooth random image and a noisy, rescaled copy (numpy float64)."""
    rng = np.random.default_rng(seed)
    full = (batch,) + shape if batch else shape
    axes = (1, 2) if batch else (0, 1)
    sigmas = tuple(2.0 if k in axes else 0 for k in range(len(full)))
    a = scipy.ndimage.gaussian_filter(rng.normal(size=full), sigmas) * 10 + 3
    b = 0.5 * a + noise * scipy.ndimage.gaussian_filter(rng.normal(size=full), sigmas) * 10 - 1
    return a, b


def np_corr(a, b, w=None) -> float:
    """Weighted Pearson correlation (numpy's covariance with analytic weights)."""
    a, b = np.ravel(a), np.ravel(b)
    if w is None:
        return float(np.corrcoef(a, b)[0, 1])
    w = np.ravel(w)
    keep = w > 0
    c = np.cov(np.stack([a[keep], b[keep]]), aweights=w[keep])
    return float(c[0, 1] / math.sqrt(c[0, 0] * c[1, 1]))


# --------------------------------------------------------------------------
# ZNCC
# --------------------------------------------------------------------------


def test_zncc_by_hand():
    # a = [1 2; 3 4], b = [2 1; 4 3]: both means 2.5
    # a - 2.5 = [-1.5 -0.5 0.5 1.5], b - 2.5 = [-0.5 -1.5 1.5 0.5]
    # cov = (0.75 + 0.75 + 0.75 + 0.75) / 4 = 0.75; var_a = var_b = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # ZNCC = 0.75 / 1.25 = 0.6
    a = t64([[1, 2], [3, 4]])
    b = t64([[2, 1], [4, 3]])
    value = sim.zncc(a, b)
    assert value.shape == (1,) and value.dtype == F64
    assert value.item() == pytest.approx(0.6, abs=1e-12)


def test_zncc_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(13, 17))
    b = 0.3 * a + rng.normal(size=(13, 17))
    assert sim.zncc(t64(a), t64(b)).item() == pytest.approx(np_corr(a, b), abs=1e-12)


def test_masked_zncc_is_zncc_of_selected_pixels():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(12, 15))
    b = a + rng.normal(size=(12, 15))
    mask = rng.random((12, 15)) > 0.4
    b_garbage = b.copy()
    b_garbage[~mask] = np.nan  # ignored pixels may hold anything
    value = sim.zncc(t64(a), t64(b_garbage), torch.as_tensor(mask))
    assert value.item() == pytest.approx(np.corrcoef(a[mask], b[mask])[0, 1], abs=1e-12)
    # float weights: weighted Pearson correlation
    weights = rng.random((12, 15)) * mask
    value = sim.zncc(t64(a), t64(b), t64(weights))
    assert value.item() == pytest.approx(np_corr(a, b, weights), abs=1e-12)


def test_zncc_affine_intensity_invariance_and_identity():
    a, b = smooth_pair()
    base = sim.zncc(t64(a), t64(b)).item()
    assert sim.zncc(t64(2.5 * a + 4.0), t64(b)).item() == pytest.approx(base, abs=1e-9)
    assert sim.zncc(t64(a), t64(0.01 * b - 2.0)).item() == pytest.approx(base, abs=1e-9)
    assert sim.zncc(t64(-3.0 * a + 1.0), t64(b)).item() == pytest.approx(-base, abs=1e-9)
    assert sim.zncc(t64(a), t64(a)).item() == pytest.approx(1.0, abs=1e-9)
    assert sim.zncc(t64(a), t64(7 * a + 2)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", sorted(sim.SIMILARITIES))
def test_batch_equals_separate_calls(name):
    fn = sim.get_similarity(name)
    a, b = smooth_pair(shape=(22, 24), batch=3, seed=3)
    rng = np.random.default_rng(4)
    masks = np.ones((3, 22, 24), dtype=bool)
    masks[1, :, :5] = False
    masks[2, 15:, :] = False
    masks[2] &= rng.random((22, 24)) > 0.1
    drr = torch.as_tensor(a, dtype=torch.float32)
    batched = fn(drr, t64(b[0]), torch.as_tensor(masks))  # one X-ray broadcast over 3 DRRs
    assert batched.shape == (3,) and batched.dtype == torch.float32
    for k in range(3):
        single = fn(drr[k], t64(b[0]), torch.as_tensor(masks[k]))
        assert single.shape == (1,)
        assert batched[k].item() == pytest.approx(single.item(), abs=1e-5)
    # batched X-ray too, float64
    batched = fn(t64(a), t64(b))
    for k in range(3):
        assert batched[k].item() == pytest.approx(fn(t64(a[k]), t64(b[k])).item(), abs=1e-12)


# --------------------------------------------------------------------------
# Patch and multiscale ZNCC
# --------------------------------------------------------------------------


def four_patch_images():
    """8x8 images of four 4x4 patches with per-patch ZNCC 1, -1, 0 and 1/sqrt(2).

    u = (-1)**row and v = (-1)**col are zero-mean, of equal norm and orthogonal
    on every 4x4 patch. Patches: TL (a=u, b=u) -> 1; TR (a=u, b=-u) -> -1;
    BL (a=u, b=v) -> 0; BR (a=u, b=u+v) -> cov 1 / sqrt(1 * 2) = 1/sqrt(2).
    Per-patch offsets and positive scales keep the patch values, but not the
    global correlation, unchanged.
    """
    r, c = np.mgrid[0:8, 0:8]
    u, v = (-1.0) ** r, (-1.0) ** c
    a = np.empty((8, 8))
    b = np.empty((8, 8))
    tl, tr, bl, br = (slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)), (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))
    a[tl], b[tl] = 2 + u[tl], 1 + 3 * u[tl]
    a[tr], b[tr] = -1 + 2 * u[tr], 4 - u[tr]
    a[bl], b[bl] = 3 + u[bl], 2 * v[bl]
    a[br], b[br] = 1 + 0.5 * u[br], 5 + u[br] + v[br]
    return a, b


def test_patch_zncc_by_hand():
    a, b = four_patch_images()
    expected = (1 - 1 + 0 + 1 / math.sqrt(2)) / 4
    assert sim.patch_zncc(t64(a), t64(b), patch_size=4).item() == pytest.approx(expected, abs=1e-8)
    # the global value is a different number, so the patches really are separate
    assert abs(np_corr(a, b) - expected) > 0.05
    # TR patch masked out entirely: it is left out of the mean
    mask = np.ones((8, 8), dtype=bool)
    mask[0:4, 4:8] = False
    value = sim.patch_zncc(t64(a), t64(b), torch.as_tensor(mask), patch_size=4)
    assert value.item() == pytest.approx((1 + 0 + 1 / math.sqrt(2)) / 3, abs=1e-8)
    # one ignored pixel in BR: that patch's ZNCC is over its 15 remaining pixels
    mask = np.ones((8, 8), dtype=bool)
    mask[6, 5] = False
    keep = mask[4:8, 4:8]
    br = np.corrcoef(a[4:8, 4:8][keep], b[4:8, 4:8][keep])[0, 1]
    value = sim.patch_zncc(t64(a), t64(b), torch.as_tensor(mask), patch_size=4)
    assert value.item() == pytest.approx((1 - 1 + 0 + br) / 4, abs=1e-8)


def test_patch_zncc_leftover_rows_and_columns_join_the_last_patch():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(10, 11))
    b = a + rng.normal(size=(10, 11))
    # patch 4: row bands [0, 4) and [4, 10), column bands [0, 4) and [4, 11)
    bands_r, bands_c = [slice(0, 4), slice(4, 10)], [slice(0, 4), slice(4, 11)]
    expected = np.mean([np_corr(a[r, c], b[r, c]) for r in bands_r for c in bands_c])
    assert sim.patch_zncc(t64(a), t64(b), patch_size=4).item() == pytest.approx(expected, abs=1e-12)


def test_patch_zncc_default_patch_size():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(40, 48))
    b = a + rng.normal(size=(40, 48))
    # default = max(4, 40 // 8) = 5 px: 8 row bands x 9 column bands (the last one 8 px wide)
    assert sim.default_patch_size(40, 48) == 5
    bands_r = [slice(5 * i, 5 * i + 5) for i in range(8)]
    bands_c = [slice(5 * j, 5 * j + 5) for j in range(8)] + [slice(40, 48)]
    expected = np.mean([np_corr(a[r, c], b[r, c]) for r in bands_r for c in bands_c])
    assert sim.patch_zncc(t64(a), t64(b)).item() == pytest.approx(expected, abs=1e-12)
    assert sim.default_patch_size(50, 50) == 6 and sim.default_patch_size(200, 200) == 25
    assert sim.default_patch_size(20, 30) == 4


def test_multiscale_zncc_by_hand():
    a, b = four_patch_images()
    patches = (1 - 1 + 0 + 1 / math.sqrt(2)) / 4
    whole = np_corr(a, b)
    value = sim.multiscale_zncc(t64(a), t64(b), patch_sizes=(None, 4))
    assert value.item() == pytest.approx((whole + patches) / 2, abs=1e-8)
    # an 8 px patch on an 8x8 image is the global ZNCC again
    value = sim.multiscale_zncc(t64(a), t64(b), patch_sizes=(None, 4, 8))
    assert value.item() == pytest.approx((2 * whole + patches) / 3, abs=1e-8)


def test_multiscale_default_scales():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(40, 48))
    b = a + rng.normal(size=(40, 48))
    # default (None, 40 // 4, 40 // 8) = (None, 10, 5)
    expected = np.mean([np_corr(a, b),
                        sim.patch_zncc(t64(a), t64(b), patch_size=10).item(),
                        sim.patch_zncc(t64(a), t64(b), patch_size=5).item()])
    assert sim.multiscale_zncc(t64(a), t64(b)).item() == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------
# Blur and gradient NCC
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.5])
def test_blurred_delta_is_a_unit_gaussian_of_variance_sigma_squared(sigma):
    delta = torch.zeros(41, 43, dtype=F64)
    delta[20, 21] = 1.0
    out = sim.gaussian_blur(delta, sigma).numpy()
    assert out.sum() == pytest.approx(1.0, abs=1e-12)
    r, c = np.mgrid[0:41, 0:43]
    assert (out * r).sum() == pytest.approx(20.0, abs=1e-12)
    assert (out * c).sum() == pytest.approx(21.0, abs=1e-12)
    # The kernel is cut at 4 sigma; the Gaussian's variance beyond 4 sigma is
    # 2 (4 phi(4) + 1 - Phi(4)) sigma**2 = 1.1e-3 sigma**2, so the variance is
    # sigma**2 within 2e-3 relative.
    assert (out * (r - 20) ** 2).sum() == pytest.approx(sigma ** 2, rel=2e-3)
    assert (out * (c - 21) ** 2).sum() == pytest.approx(sigma ** 2, rel=2e-3)
    assert abs((out * (r - 20) * (c - 21)).sum()) < 1e-12


def test_blur_matches_scipy_and_keeps_constants():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(2, 19, 23))
    for sigma in (0.7, 1.3, 2.5):
        expected = scipy.ndimage.gaussian_filter(image, (0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(sim.gaussian_blur(t64(image), sigma).numpy(), expected, atol=1e-12)
    constant = torch.full((9, 7), 3.25, dtype=F64)
    np.testing.assert_allclose(sim.gaussian_blur(constant, 2.0).numpy(), 3.25, atol=1e-13)
    assert torch.equal(sim.gaussian_blur(t64(image), 0.0), t64(image))


def test_gradient_ncc_by_hand():
    # a = col**2, b = col on 5x6 images, no blur. Row derivatives are 0 in both
    # (constant, ZNCC 0). Sobel column derivative = central difference with the
    # border pixel replicated, the same on every row:
    #   a: [(1-0)/2, (4-0)/2, (9-1)/2, (16-4)/2, (25-9)/2, (25-16)/2] = [0.5, 2, 4, 6, 8, 4.5]
    #   b: [0.5, 1, 1, 1, 1, 0.5]
    col = np.arange(6.0)
    a = np.tile(col ** 2, (5, 1))
    b = np.tile(col, (5, 1))
    expected = (0.0 + np.corrcoef([0.5, 2, 4, 6, 8, 4.5], [0.5, 1, 1, 1, 1, 0.5])[0, 1]) / 2
    assert sim.gradient_ncc(t64(a), t64(b), sigma=0).item() == pytest.approx(expected, abs=1e-12)


def test_gradient_ncc_invariances():
    a, b = smooth_pair(seed=9)
    base = sim.gradient_ncc(t64(a), t64(b)).item()
    assert -1 < base < 1
    assert sim.gradient_ncc(t64(a + 17.0), t64(b - 5.0)).item() == pytest.approx(base, abs=1e-9)
    assert sim.gradient_ncc(t64(3 * a), t64(b)).item() == pytest.approx(base, abs=1e-9)
    assert sim.gradient_ncc(t64(a), t64(a)).item() == pytest.approx(1.0, abs=1e-9)
    assert sim.gradient_ncc(t64(a), t64(-a)).item() == pytest.approx(-1.0, abs=1e-9)


def test_gradient_ncc_ignores_masked_pixels():
    a, b = smooth_pair(seed=10)
    mask = np.ones(a.shape, dtype=bool)
    mask[:, :6] = False  # a collimator band
    b1, b2 = b.copy(), b.copy()
    b1[:, :6] = 1e6  # a bright collimator edge that must not create gradients
    b2[:, :6] = np.nan
    a2 = a.copy()
    a2[:, :6] = -50.0
    v1 = sim.gradient_ncc(t64(a), t64(b1), torch.as_tensor(mask))
    v2 = sim.gradient_ncc(t64(a2), t64(b2), torch.as_tensor(mask))
    assert torch.isfinite(v1).all()
    assert v1.item() == pytest.approx(v2.item(), abs=1e-12)


# --------------------------------------------------------------------------
# SSIM and CSS
# --------------------------------------------------------------------------


def np_ssim_maps(a, b, w=None, window=11, sigma=1.5, c1=1e-4, c2=9e-4):
    """SSIM of z-scored images with explicit loops: (luminance map, cs map, centre weights)."""
    w = np.ones_like(a) if w is None else np.asarray(w, dtype=np.float64)
    p = w / w.sum()

    def zscore(x):
        x = np.where(w > 0, x, 0.0)
        m = (p * x).sum()
        return (x - m) / math.sqrt((p * (x - m) ** 2).sum())

    x, y = zscore(a), zscore(b)
    r = window // 2
    g1 = np.exp(-0.5 * ((np.arange(window) - r) / sigma) ** 2)
    g = np.outer(g1, g1)
    rows, cols = a.shape[0] - 2 * r, a.shape[1] - 2 * r
    lum, cs, centre = np.zeros((rows, cols)), np.zeros((rows, cols)), np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            centre[i, j] = w[i + r, j + r]
            if centre[i, j] == 0:
                continue
            k = g * w[i:i + window, j:j + window]
            k = k / k.sum()
            xs, ys = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mx, my = (k * xs).sum(), (k * ys).sum()
            vx, vy = (k * (xs - mx) ** 2).sum(), (k * (ys - my) ** 2).sum()
            cxy = (k * (xs - mx) * (ys - my)).sum()
            lum[i, j] = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
            cs[i, j] = (2 * cxy + c2) / (vx + vy + c2)
    return lum, cs, centre


def np_ssim(a, b, w=None, **kw):
    lum, cs, centre = np_ssim_maps(a, b, w, **kw)
    return (centre * lum * cs).sum() / centre.sum(), (centre * cs).sum() / centre.sum()


def test_ssim_and_css_match_loop_reference():
    a, b = smooth_pair(shape=(20, 22), seed=11, noise=0.8)
    ref_ssim, ref_css = np_ssim(a, b)
    assert sim.ssim(t64(a), t64(b)).item() == pytest.approx(ref_ssim, abs=1e-8)
    assert sim.css(t64(a), t64(b)).item() == pytest.approx(ref_css, abs=1e-8)
    ref_ssim, ref_css = np_ssim(a, b, window=5, sigma=1.0)
    assert sim.ssim(t64(a), t64(b), window=5, sigma=1.0).item() == pytest.approx(ref_ssim, abs=1e-8)
    assert sim.css(t64(a), t64(b), window=5, sigma=1.0).item() == pytest.approx(ref_css, abs=1e-8)


def test_masked_ssim_and_css_match_loop_reference():
    a, b = smooth_pair(shape=(20, 22), seed=12, noise=0.8)
    rng = np.random.default_rng(12)
    w = np.where(rng.random(a.shape) > 0.2, rng.uniform(0.3, 1.0, a.shape), 0.0)
    w[:, :4] = 0.0
    b_garbage = np.where(w > 0, b, np.nan)
    ref_ssim, ref_css = np_ssim(a, b, w, window=7, sigma=1.5)
    assert sim.ssim(t64(a), t64(b_garbage), t64(w), window=7).item() == pytest.approx(ref_ssim, abs=1e-8)
    assert sim.css(t64(a), t64(b_garbage), t64(w), window=7).item() == pytest.approx(ref_css, abs=1e-8)


def test_ssim_css_identity_invariance_and_order():
    a, b = smooth_pair(shape=(24, 24), seed=13, noise=0.1)
    assert sim.ssim(t64(a), t64(a)).item() == pytest.approx(1.0, abs=1e-9)
    assert sim.css(t64(a), t64(a)).item() == pytest.approx(1.0, abs=1e-9)
    # z-scoring: positive affine intensity changes do not matter
    base = sim.ssim(t64(a), t64(b)).item()
    assert sim.ssim(t64(4 * a + 9), t64(0.2 * b - 3)).item() == pytest.approx(base, abs=1e-9)
    # The luminance term l is at most 1 (mu_x**2 + mu_y**2 >= 2 mu_x mu_y), so the
    # SSIM map l * cs <= cs wherever cs >= 0, and >= cs wherever cs <= 0 (l >= -1).
    lum, cs, _ = np_ssim_maps(a, b)
    assert (cs >= 0).all() and (lum <= 1 + 1e-12).all()
    assert sim.css(t64(a), t64(b)).item() >= sim.ssim(t64(a), t64(b)).item() + 1e-6
    lum, cs, _ = np_ssim_maps(a, -b)
    assert (cs <= 0).all()
    assert sim.css(t64(a), t64(-b)).item() <= sim.ssim(t64(a), t64(-b)).item() - 1e-6


# --------------------------------------------------------------------------
# Mutual information
# --------------------------------------------------------------------------

# With the default sigma_bins = 0.5, a grey level's kernel falls off as
# exp(-2 d**2) at d bins; levels 15.5 or more bins apart overlap by less than
# exp(-480), so for images made of such levels the Parzen MI equals the entropy
# of the level proportions up to float rounding (tolerance 1e-9).


def test_mi_of_image_with_itself_is_its_entropy():
    two = np.zeros((8, 8))
    two[:, 4:] = 1.0  # two levels, equal halves
    assert sim.mutual_information(t64(two), t64(two)).item() == pytest.approx(math.log(2), abs=1e-9)
    three = np.zeros((8, 8))
    three[:, 4:6] = 5.0
    three[:, 6:] = 10.0  # levels 0, 0.5, 1 after min-max, proportions 1/2, 1/4, 1/4
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert sim.mutual_information(t64(three), t64(three)).item() == pytest.approx(entropy, abs=1e-9)
    # MI is unchanged by a one-to-one relabelling of the grey levels, monotonic or not
    relabelled = np.select([three == 0, three == 5], [7.0, -2.0], 3.0)
    assert sim.mutual_information(t64(three), t64(relabelled)).item() == pytest.approx(entropy, abs=1e-9)


def test_mi_of_independent_images_is_zero():
    r, c = np.mgrid[0:8, 0:10]
    checker = ((r + c) % 2).astype(float)
    stripes = (r % 2).astype(float)
    # on every stripe the checkerboard is half 0 and half 1: p(a, b) = 1/4 = p(a) p(b),
    # and the Parzen joint histogram factorises the same way
    assert sim.mutual_information(t64(checker), t64(stripes)).item() == pytest.approx(0.0, abs=1e-9)
    assert sim.mutual_information(t64(checker), t64(stripes), normalized=True).item() == pytest.approx(1.0, abs=1e-9)


def test_nmi_of_identical_images():
    two = np.zeros((8, 8))
    two[:, 4:] = 1.0
    # Each level's kernel over the 32 bins is one-sided (the level sits on the end
    # bin): k_d = exp(-d**2 / (2 * 0.5**2)) normalised, entropy h. With disjoint
    # kernels H(A) = H(B) = log 2 + h and H(A, B) = log 2 + 2 h, so
    # NMI = 2 (log 2 + h) / (log 2 + 2 h): below 2 by the kernel's smoothing.
    k = np.exp(-np.arange(32) ** 2 / (2 * 0.5 ** 2))
    k /= k.sum()
    h = -(k * np.log(k, where=k > 0, out=np.zeros_like(k))).sum()
    expected = 2 * (math.log(2) + h) / (math.log(2) + 2 * h)
    assert sim.mutual_information(t64(two), t64(two), normalized=True).item() == pytest.approx(expected, abs=1e-9)
    # a narrow kernel (sigma 0.15 bins: neighbour bins get exp(-22) of the weight)
    # has h ~ 1e-8, and NMI -> 2
    narrow = sim.mutual_information(t64(two), t64(two), normalized=True, sigma_bins=0.15).item()
    assert narrow == pytest.approx(2.0, abs=1e-6)


def np_parzen_mi(a, b, w, bins, sigma_bins, normalized=False):
    """Parzen MI with loops over pixels, as documented: Gaussian weights on bin centres k/(bins-1)."""
    a, b, w = np.ravel(a), np.ravel(b), np.ravel(w)
    keep = w > 0
    a = (a - a[keep].min()) / (a[keep].max() - a[keep].min())
    b = (b - b[keep].min()) / (b[keep].max() - b[keep].min())
    centres = np.arange(bins) / (bins - 1)
    s = sigma_bins / (bins - 1)
    joint = np.zeros((bins, bins))
    for i in np.flatnonzero(keep):
        ka = np.exp(-((a[i] - centres) ** 2) / (2 * s * s))
        kb = np.exp(-((b[i] - centres) ** 2) / (2 * s * s))
        joint += w[i] * np.outer(ka / ka.sum(), kb / kb.sum())
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return -(p * np.log(p)).sum()

    ha, hb, hab = entropy(joint.sum(1)), entropy(joint.sum(0)), entropy(joint)
    return (ha + hb) / hab if normalized else ha + hb - hab


def test_mi_matches_loop_reference():
    a, b = smooth_pair(shape=(12, 13), seed=14, noise=0.7)
    rng = np.random.default_rng(14)
    w = np.where(rng.random(a.shape) > 0.25, rng.uniform(0.2, 1.0, a.shape), 0.0)
    for bins, sigma_bins in ((32, 0.5), (8, 1.0)):
        assert sim.mutual_information(t64(a), t64(b), bins=bins, sigma_bins=sigma_bins).item() == pytest.approx(
            np_parzen_mi(a, b, np.ones_like(a), bins, sigma_bins), abs=1e-9)
        assert sim.mutual_information(t64(a), t64(b), t64(w), bins=bins, sigma_bins=sigma_bins,
                                      normalized=True).item() == pytest.approx(
            np_parzen_mi(a, b, w, bins, sigma_bins, normalized=True), abs=1e-9)
    base = sim.mutual_information(t64(a), t64(b)).item()
    assert sim.mutual_information(t64(3 * a - 2), t64(0.5 * b + 8)).item() == pytest.approx(base, abs=1e-9)


# --------------------------------------------------------------------------
# Residuals
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zncc", "patch_zncc", "multiscale_zncc", "gradient_ncc"])
@pytest.mark.parametrize("masked", [False, True])
def test_residual_squared_norm_is_one_minus_similarity(name, masked):
    a, b = smooth_pair(shape=(30, 33), seed=15, noise=1.0, batch=3)
    mask = None
    if masked:
        rng = np.random.default_rng(15)
        m = np.where(rng.random((3, 30, 33)) > 0.2, rng.uniform(0.1, 1.0, (3, 30, 33)), 0.0)
        m[1, :12, :12] = 0.0  # whole patches without weight in batch element 1
        mask = t64(m)
    residual = sim.get_residual(name)(t64(a), t64(b), mask)
    value = sim.get_similarity(name)(t64(a), t64(b), mask)
    assert residual.shape[0] == 3 and residual.dim() == 2
    one_minus = 1 - value
    assert (one_minus > 0.05).all()  # a non-trivial case: no cancellation near 0
    np.testing.assert_allclose((residual ** 2).sum(-1).numpy(), one_minus.numpy(), rtol=1e-10)


def test_residual_of_constant_drr_keeps_the_identity():
    b = t64(np.random.default_rng(16).normal(size=(10, 12)))
    for name in ("zncc", "patch_zncc", "gradient_ncc"):
        residual = sim.get_residual(name)(torch.full((10, 12), 2.0, dtype=F64), b)
        value = sim.get_similarity(name)(torch.full((10, 12), 2.0, dtype=F64), b)
        assert abs(value.item()) < 1e-6
        assert (residual ** 2).sum().item() == pytest.approx(1 - value.item(), rel=1e-10)


def test_mse_residual():
    a, b = smooth_pair(shape=(9, 11), seed=17)
    r = sim.mse_residual(t64(a), t64(b))
    assert r.shape == (1, 99)
    assert (r ** 2).sum().item() == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)
    w = np.random.default_rng(17).random((9, 11))
    r = sim.get_residual("mse")(t64(a), t64(b), t64(w))
    assert (r ** 2).sum().item() == pytest.approx(np.average((a - b) ** 2, weights=w), rel=1e-12)


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------


def _gradcheck(fn, a, b, mask=None):
    drr = t64(a).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, t64(b), mask), (drr,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("case", ["zncc", "zncc_masked", "patch_zncc", "gradient_ncc", "gradient_ncc_masked",
                                  "ssim", "ssim_masked", "css", "mi", "mi_masked", "zncc_residual",
                                  "gradient_ncc_residual"])
def test_gradcheck(case):
    a, b = smooth_pair(shape=(9, 10), seed=18, noise=0.6)
    a = a + 0.05 * np.random.default_rng(18).normal(size=a.shape)  # unique min / max for MI
    mask = np.ones(a.shape)
    mask[:, :2] = 0.0
    mask[4, 5] = 0.5
    mask = t64(mask)
    fns = {
        "zncc": (sim.zncc, None),
        "zncc_masked": (sim.zncc, mask),
        "patch_zncc": (lambda x, y, m: sim.patch_zncc(x, y, m, patch_size=4), mask),
        "gradient_ncc": (lambda x, y, m: sim.gradient_ncc(x, y, m, sigma=0.8), None),
        "gradient_ncc_masked": (lambda x, y, m: sim.gradient_ncc(x, y, m, sigma=0.8), mask),
        "ssim": (lambda x, y, m: sim.ssim(x, y, m, window=5), None),
        "ssim_masked": (lambda x, y, m: sim.ssim(x, y, m, window=5), mask),
        "css": (lambda x, y, m: sim.css(x, y, m, window=5), None),
        "mi": (lambda x, y, m: sim.mutual_information(x, y, m, bins=8), None),
        "mi_masked": (lambda x, y, m: sim.mutual_information(x, y, m, bins=8, normalized=True), mask),
        "zncc_residual": (sim.zncc_residual, mask),
        "gradient_ncc_residual": (lambda x, y, m: sim.gradient_ncc_residual(x, y, m, sigma=0.8), None),
    }
    fn, m = fns[case]
    if case.startswith("mi") or case.endswith("residual"):  # fewer pixels and outputs: faster Jacobians
        a, b, m = a[:5, 1:7], b[:5, 1:7], None if m is None else m[:5, 1:7]
    _gradcheck(fn, a, b, m)


@pytest.mark.parametrize("name", sorted(sim.SIMILARITIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("level", [0.0, 3.7])
def test_constant_drr_gives_finite_value_and_gradient(name, dtype, level):
    """A DRR whose rays all miss the CT (0) or a flat one: finite value, ~0 for the correlations and MI.

    (``mse`` is 1 - MSE, not normalised: its value at a flat DRR is checked against numpy instead.)
    """
    xray = torch.as_tensor(smooth_pair(shape=(24, 24), seed=19)[1], dtype=dtype)
    drr = torch.full((24, 24), level, dtype=dtype, requires_grad=True)
    value = sim.get_similarity(name)(drr, xray)
    assert torch.isfinite(value).all()
    if name == "mse":
        expected = 1.0 - np.mean((level - xray.double().numpy()) ** 2)
        assert value.item() == pytest.approx(expected, rel=1e-5)
    elif name not in ("ssim", "css"):
        assert abs(value.item()) < 1e-5
    value.sum().backward()
    assert torch.isfinite(drr.grad).all()
    if name in sim.RESIDUALS:
        drr.grad = None
        residual = sim.get_residual(name)(drr, xray)
        residual.square().sum().backward()
        assert torch.isfinite(residual).all() and torch.isfinite(drr.grad).all()


# --------------------------------------------------------------------------
# Reports and bad input
# --------------------------------------------------------------------------


def test_image_metrics():
    a, b = smooth_pair(seed=20)
    metrics = sim.image_metrics(t64(a), t64(b))
    assert set(metrics) == {"ncc", "ssim", "css"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["ncc"] == pytest.approx(np_corr(a, b), abs=1e-12)
    ref_ssim, ref_css = np_ssim(a, b)
    assert metrics["ssim"] == pytest.approx(ref_ssim, abs=1e-8)
    assert metrics["css"] == pytest.approx(ref_css, abs=1e-8)
    with pytest.raises(InputError, match="one image pair"):
        sim.image_metrics(torch.zeros(2, 24, 26, dtype=F64), t64(b))


def test_registries():
    assert set(sim.SIMILARITIES) == {"zncc", "patch_zncc", "multiscale_zncc", "gradient_ncc", "ssim", "css", "mi",
                                     "mse"}
    assert set(sim.RESIDUALS) == {"zncc", "patch_zncc", "multiscale_zncc", "gradient_ncc", "mse"}
    assert sim.get_similarity("mi") is sim.mutual_information
    assert sim.get_residual("zncc") is sim.zncc_residual


@pytest.mark.parametrize("name", sorted(sim.SIMILARITIES))
def test_bad_input_raises_input_error(name):
    fn = sim.get_similarity(name)
    good = torch.rand(16, 16, dtype=F64)
    with pytest.raises(InputError, match=r"\(16, 16\).*\(16, 15\)"):
        fn(good, torch.rand(16, 15, dtype=F64))
    with pytest.raises(InputError, match="batch sizes"):
        fn(torch.rand(3, 16, 16, dtype=F64), torch.rand(2, 16, 16, dtype=F64))
    nan = torch.rand(16, 16, dtype=F64)
    nan[3, 4] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fn(good, nan)
    inf = torch.rand(16, 16, dtype=F64)
    inf[0, 0] = float("inf")
    with pytest.raises(InputError, match="inf"):
        fn(good, inf)
    with pytest.raises(InputError, match="no nonzero pixel"):
        fn(good, good, torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(InputError, match="floating"):
        fn(torch.ones(16, 16, dtype=torch.int64), good)
    with pytest.raises(InputError, match="floating"):
        fn(good, torch.ones(16, 16, dtype=torch.int32))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        fn(good, good, torch.full((16, 16), 2.0))


def test_bad_names_and_sizes():
    with pytest.raises(InputError, match="valid names: css, gradient_ncc, mi, mse, multiscale_zncc, patch_zncc, ssim, zncc"):
        sim.get_similarity("ncc2")
    with pytest.raises(InputError, match="no least-squares residual.*mse"):
        sim.get_residual("ssim")
    with pytest.raises(InputError, match="residuals exist for"):
        sim.get_residual("bogus")
    small = torch.rand(8, 9, dtype=F64)
    with pytest.raises(InputError, match="smaller than the 11x11 SSIM window"):
        sim.ssim(small, small)
    with pytest.raises(InputError, match="smaller than"):
        sim.css(small, small, window=9)
    with pytest.raises(InputError, match="patch_size 10 px is larger"):
        sim.patch_zncc(small, small, patch_size=10)
    with pytest.raises(InputError, match="at least 3x3"):
        sim.gradient_ncc(torch.rand(2, 9, dtype=F64), torch.rand(2, 9, dtype=F64))
    with pytest.raises(InputError, match="odd"):
        sim.ssim(small, small, window=4)
    with pytest.raises(InputError, match="sigma"):
        sim.gradient_ncc(small, small, sigma=-1.0)
    with pytest.raises(InputError, match="bins"):
        sim.mutual_information(small, small, bins=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # raised inside torch.func
@pytest.mark.parametrize("name", sorted(sim.RESIDUALS))
def test_residual_forward_mode_jvp_matches_finite_differences(name):
    """Levenberg-Marquardt pushes the DRR Jacobian through the residual with torch.func.jvp."""
    rng = np.random.default_rng(21)
    a, b = smooth_pair(shape=(12, 14), seed=21, noise=0.8, batch=2)
    tangent = t64(rng.normal(size=a.shape))
    mask = torch.as_tensor(rng.random((12, 14)) > 0.2)
    fn = sim.get_residual(name)
    _, jvp = torch.func.jvp(lambda x: fn(x, t64(b), mask), (t64(a),), (tangent,))
    h = 1e-6
    fd = (fn(t64(a) + h * tangent, t64(b), mask) - fn(t64(a) - h * tangent, t64(b), mask)) / (2 * h)
    np.testing.assert_allclose(jvp.numpy(), fd.numpy(), atol=1e-8 * float(fd.abs().max()) + 1e-12, rtol=1e-6)
