"""Training data (`DiffRegLogic.learning.data`): network inputs, the DRR source, the staged pool, the validation set.

Truth: resizing is checked against block averages computed by hand with
numpy, standardisation against numpy's mean and std; the source against a
direct `render` call at poses built by `geometry.motions.perturb_pose`; the
pool's stages against the schedule's closed form (sizes total / K, ranges
start + (1 - start) k / (K - 1)) and against a fresh pool (resume); the
validation set against its own re-rendering.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from DiffRegLogic.drr.rendering import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import demo_detector
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.motions import perturb_pose
from DiffRegLogic.learning.augment import NO_AUGMENTATION
from DiffRegLogic.learning.data import (DRRSource, TrainingPool, network_input, training_detector,
                                        validation_set)
from DiffRegLogic.learning.poses import PoseRange, reference_view, sample_motions
from DiffRegLogic.volume.phantoms import chest_phantom

SIZE = 32
RANGE = PoseRange(40.0, 30.0)


@pytest.fixture(scope="module")
def source():
    volume = chest_phantom(shape_ijk=(48, 42, 36), spacing=(6.9, 6.9, 8.0))
    detector = demo_detector()
    return DRRSource(volume, detector, reference_view(volume, detector), image_size=SIZE, render_batch=4)


# ---------------------------------------------------------------------- network input


def test_network_input_standardises_each_image():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 50.0, 1e-3], dtype=torch.float64)[:, None, None]
    images = torch.rand(3, SIZE, SIZE, generator=g, dtype=torch.float64) * scales
    images[1] += 7.0
    x = network_input(images, SIZE)
    assert x.shape == (3, 1, SIZE, SIZE) and x.dtype == torch.float32
    for k in range(3):
        a = images[k].numpy()
        np.testing.assert_allclose(x[k, 0].numpy(), (a - a.mean()) / a.std(), rtol=1e-4, atol=1e-4)
        assert abs(float(x[k].mean())) < 1e-5 and float(x[k].std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    assert float(network_input(torch.full((1, 9, 7), 3.3), 8).abs().max()) < 1e-5  # constant -> zeros
    assert torch.equal(network_input(images[0], SIZE), x[:1])  # (H, W) accepted
    assert torch.equal(network_input(images[:, None], SIZE), x)  # (n, 1, H, W) accepted


def test_network_input_resizes_by_block_average():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 96, 64, generator=g)
    x = network_input(image, 32)
    a = image.numpy()
    blocks = a.reshape(2, 32, 3, 32, 2).mean(axis=(2, 4))  # 3 x 2 blocks: rows 96 -> 32, columns 64 -> 32
    expected = (blocks - blocks.mean(axis=(1, 2), keepdims=True)) / blocks.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-4, atol=1e-4)
    up = network_input(torch.rand(1, 16, 16, generator=g), 32)  # growing: bilinear, still standardised
    assert up.shape == (1, 1, 32, 32) and abs(float(up.mean())) < 1e-5


def test_network_input_refuses_bad_images():
    for bad in (torch.zeros(2, 3, 4, 5), torch.ones(4, 4, dtype=torch.int64), np.zeros((4, 4))):
        with pytest.raises(InputError):
            network_input(bad, 8)
    with pytest.raises(InputError, match="NaN"):
        network_input(torch.tensor([[[math.nan, 1.0], [1.0, 1.0]]]), 4)
    with pytest.raises(InputError, match="image_size"):
        network_input(torch.zeros(1, 4, 4), 0)


def test_training_detector_keeps_the_field_of_view():
    det = demo_detector()  # 200 x 200 px of 3 mm
    small = training_detector(det, 64)
    assert small.shape == (64, 64)
    assert small.rows * small.pixel_spacing[0] == pytest.approx(600.0)
    assert small.cols * small.pixel_spacing[1] == pytest.approx(600.0)
    assert small.sdd == det.sdd
    assert training_detector(det, 400).shape == (200, 200)  # never upsampled
    wide = training_detector(Detector(rows=100, cols=200, sdd=1000.0, pixel_spacing=(1.0, 1.0),
                                      principal_point=(120.0, 40.0)), 50)
    assert wide.shape == (25, 50) and wide.pixel_spacing == (4.0, 4.0)
    assert wide.principal_point == pytest.approx(((120.5 / 4) - 0.5, (40.5 / 4) - 0.5))


# ---------------------------------------------------------------------- source


def test_source_renders_what_a_direct_render_call_gives(source):
    motions = sample_motions(5, RANGE, torch.Generator().manual_seed(2))
    images = source.render(motions)
    assert images.shape == (5, SIZE, SIZE) and images.dtype == torch.float32
    assert source.render_detector.shape == (SIZE, SIZE)
    poses = perturb_pose(source.reference_pose, motions, source.volume.center.to(torch.float64))
    with torch.no_grad():
        direct = render(source.volume, training_detector(demo_detector(), SIZE), poses.float(), "siddon",
                        backend="fused")
    torch.testing.assert_close(images, direct, rtol=0, atol=0)  # chunks of 4 + 1 change nothing
    assert float(images.amax()) > 1.0  # the CT is in view
    assert source.render(torch.zeros(0, 6, dtype=torch.float64)).shape == (0, SIZE, SIZE)


# ---------------------------------------------------------------------- pool


def test_pool_grows_in_stages_with_a_widening_range(source):
    pool = TrainingPool(source, RANGE, 14, stages=4, start_fraction=0.5, seed=3)
    assert (pool.size, pool.stage, pool.fraction) == (0, 0, 0.5)
    assert pool.update(0.0) == 4 and (pool.size, pool.stage, pool.fraction) == (4, 1, 0.5)
    half = RANGE.half_widths()
    assert bool((pool.motions.abs() <= half * 0.5 + 1e-12).all())  # stage 0 within half the range
    assert pool.update(0.2) == 0  # stage 1 starts at 0.25
    assert pool.update(0.25) == 4 and pool.stage == 2
    assert pool.fraction == pytest.approx(0.5 + 0.5 / 3)
    assert pool.update(1.0) == 6 and (pool.size, pool.stage, pool.fraction) == (14, 4, 1.0)  # stages of 4, 4, 3, 3
    assert [pool.stage_size(k) for k in range(4)] == [4, 4, 3, 3]
    for k, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 11), (11, 14)]):
        f = 0.5 + 0.5 * k / 3
        assert bool((pool.motions[lo:hi].abs() <= half * f + 1e-12).all())
    assert bool((pool.motions[11:].abs() > half * 0.5).any())  # the last stage reaches past half the range
    assert pool.update(1.0) == 0
    torch.testing.assert_close(pool.images[6:7], source.render(pool.motions[6:7]), rtol=0, atol=0)


def test_pool_without_incremental_renders_everything_at_full_range(source):
    pool = TrainingPool(source, RANGE, 12, incremental=False, stages=4, seed=3)
    assert pool.update(0.0) == 12 and (pool.size, pool.stage, pool.fraction) == (12, 1, 1.0)
    assert bool((pool.motions.abs() > RANGE.half_widths() * 0.5).any())
    assert pool.update(0.9) == 0


def test_pool_is_deterministic_and_resumable(source):
    a = TrainingPool(source, RANGE, 8, stages=4, seed=9)
    for progress in (0.0, 0.3, 0.6):
        a.update(progress)
    b = TrainingPool(source, RANGE, 8, stages=4, seed=9)
    b.update(0.6)  # a resumed run: straight to the same progress
    assert a.stage == b.stage == 3
    assert torch.equal(a.images, b.images) and torch.equal(a.motions, b.motions)
    c = TrainingPool(source, RANGE, 8, stages=4, seed=10)
    c.update(0.6)
    assert not torch.equal(a.motions, c.motions)


def test_pool_samples_standardised_inputs_with_their_motions(source):
    pool = TrainingPool(source, RANGE, 4, stages=2, seed=1)
    with pytest.raises(InputError, match="update"):
        pool.sample(2, torch.Generator().manual_seed(0))
    pool.update(1.0)
    images, motions = pool.sample(6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, SIZE, SIZE) and images.dtype == torch.float32 and motions.shape == (6, 6)
    for k in range(6):
        i = int(torch.nonzero((pool.motions == motions[k]).all(1))[0])
        torch.testing.assert_close(images[k:k + 1], network_input(pool.images[i:i + 1], SIZE))
    again, _ = pool.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # seeded draw


def test_pool_augments_afresh_at_each_draw(source):
    noisy = replace(NO_AUGMENTATION, noise_probability=1.0)
    pool = TrainingPool(source, RANGE, 1, stages=1, augmentation=noisy)
    pool.update(0.0)
    g = torch.Generator().manual_seed(0)
    first, m1 = pool.sample(1, g)
    second, m2 = pool.sample(1, g)
    assert torch.equal(m1, m2) and not torch.equal(first, second)
    assert torch.equal(pool.images, source.render(pool.motions))  # the pool keeps the clean DRR


def test_pool_refuses_bad_settings(source):
    with pytest.raises(InputError, match="stages"):
        TrainingPool(source, RANGE, 3, stages=4)
    with pytest.raises(InputError):
        TrainingPool(source, RANGE, 8, start_fraction=0.0)
    with pytest.raises(InputError):
        TrainingPool(source, (45, 60), 8)
    pool = TrainingPool(source, RANGE, 4)
    with pytest.raises(InputError):
        pool.update(1.5)


# ---------------------------------------------------------------------- validation


def test_validation_set_is_fixed_clean_and_apart_from_training(source):
    images, motions, poses = validation_set(source, RANGE, 6, seed=3)
    assert images.shape == (6, 1, SIZE, SIZE) and motions.shape == (6, 6) and poses.shape == (6, 4, 4)
    again = validation_set(source, RANGE, 6, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(motions, again[1])
    torch.testing.assert_close(images, network_input(source.render(motions), SIZE))
    torch.testing.assert_close(poses, perturb_pose(source.reference_pose, motions, source.center))
    assert bool((motions.abs() <= RANGE.half_widths()).all())
    assert bool((motions.abs() > RANGE.half_widths() * 0.5).any())  # full range
    pool = TrainingPool(source, RANGE, 6, incremental=False, seed=3)
    pool.update(0.0)
    assert float(torch.cdist(motions, pool.motions).min()) > 1e-3  # not the training poses of the same seed
    assert not torch.equal(motions, validation_set(source, RANGE, 6, seed=4)[1])
