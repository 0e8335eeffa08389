"""The renderer refuses options outside `DiffRegLogic.limits` at entry, and its kernels never loop unboundedly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from DiffRegLogic import DRR, Detector, InputError, Volume, render
from DiffRegLogic.drr import fused_cpu
from DiffRegLogic.drr.jacobian import render_with_jacobian
from DiffRegLogic.limits import MAX_SAMPLES_PER_RAY
from DiffRegLogic.volume.phantoms import grid_affine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tiny():
    volume = Volume(torch.full((6, 7, 8), 0.02), grid_affine((8, 7, 6), (1.0, 1.0, 1.0)))
    pose = torch.eye(4, dtype=torch.float64)
    pose[2, 3] = 50.0
    return volume, Detector(4, 5, 100.0, (1.0, 1.0)), pose


@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
@pytest.mark.parametrize("step", [1e-6, 0.0, -1.0, 1e9, float("nan"), float("inf"), "1", None, True])
def test_step_voxels_outside_the_range_is_refused(tiny, renderer, step):
    with pytest.raises(InputError, match="step_voxels"):
        render(*tiny, renderer, step_voxels=step, backend="reference")


@pytest.mark.parametrize("memory", [0.0, -5.0, 0.5, 1e300, float("nan"), "2048", 10**400])
def test_max_memory_mb_outside_the_range_is_refused(tiny, memory):
    with pytest.raises(InputError, match="max_memory_mb"):
        render(*tiny, max_memory_mb=memory)


@pytest.mark.parametrize("tile", [2.5, 0, -1, -10**400, True, "7", float("nan")])
def test_tile_rays_must_be_a_positive_whole_number(tiny, tile):
    with pytest.raises(InputError, match="tile_rays"):
        render(*tiny, tile_rays=tile)


def test_whole_number_tile_sizes_still_work(tiny):
    reference = render(*tiny, backend="reference")
    assert torch.equal(render(*tiny, backend="reference", tile_rays=7.0), reference)
    assert torch.equal(render(*tiny, backend="reference", tile_rays=10**400), reference)


def test_too_many_trilinear_samples_per_ray_are_refused():
    """A step that gives more than MAX_SAMPLES_PER_RAY samples on the CT's longest axis: the limit and the reason."""
    volume = Volume(torch.zeros(2, 2, 1001), grid_affine((1001, 2, 2), (1.0, 1.0, 1.0)))
    detector, pose = Detector(2, 2, 100.0, (1.0, 1.0)), torch.eye(4, dtype=torch.float64)
    with pytest.raises(InputError, match=rf"step_voxels.*samples per ray.*{MAX_SAMPLES_PER_RAY}.*finite in time"):
        render(volume, detector, pose, "trilinear", step_voxels=0.01)
    with pytest.raises(InputError, match="samples per ray"):
        DRR(volume, detector, "trilinear", step_voxels=0.01)


def test_too_many_siddon_crossings_per_ray_are_refused():
    volume = Volume(torch.zeros(2, 2, MAX_SAMPLES_PER_RAY), grid_affine((MAX_SAMPLES_PER_RAY, 2, 2), (1.0,) * 3))
    with pytest.raises(InputError, match=rf"{MAX_SAMPLES_PER_RAY}.*downsample"):
        render(volume, Detector(2, 2, 100.0, (1.0, 1.0)), torch.eye(4, dtype=torch.float64))


@pytest.mark.parametrize("renderer, backend", [(["siddon"], "auto"), ("siddon", ["auto"]), ("mip", "auto"),
                                               ("siddon", "gpu")])
def test_renderer_and_backend_must_be_known_names(tiny, renderer, backend):
    with pytest.raises(InputError, match="renderer|backend"):
        render(*tiny, renderer, backend=backend)


def test_the_drr_module_checks_its_options_at_construction(tiny):
    volume, detector, _ = tiny
    for options, field in ((dict(step_voxels=1e-6), "step_voxels"), (dict(max_memory_mb=0.0), "max_memory_mb"),
                           (dict(backend="cuda"), "backend"), (dict(renderer="raycast"), "renderer")):
        with pytest.raises(InputError, match=field):
            DRR(volume, detector, **options)


def test_render_with_jacobian_checks_its_options(tiny):
    volume, detector, pose = tiny
    params = torch.zeros(1, 6, dtype=torch.float64)
    with pytest.raises(InputError, match="step_voxels"):
        render_with_jacobian(volume, detector, lambda x: pose[None].expand(x.shape[0], 4, 4), params, "trilinear",
                             step_voxels=1e-6)
    with pytest.raises(InputError, match="params"):
        render_with_jacobian(volume, detector, lambda x: x, [[0.0] * 6])


# ---- the fused kernels on rays no Detector would make -----------------------

_KERNEL_SCRIPT = textwrap.dedent("""
    import math, sys
    import numpy as np
    from DiffRegLogic.drr import fused_cpu as fc

    nk, nj, ni = 6, 7, 8
    flat = np.full(ni * nj * nk, 0.02)
    nan, inf = math.nan, math.inf
    rays = [  # source (3), direction (3), t_near, t_far: index space of a 6 x 7 x 8 CT
        (3, 3, 3, 1e13, 1, 1, 0, 1),            # 1e13 crossings / samples along i if not bounded
        (3, 3, 3, 1, 1, 1, 0, 1e13),            # a chord far beyond the box
        (3, 3, 3, 1, 1, 1, -1e13, 0),
        (3.5, 3, -47.5, 0.1, 0.2, 100, nan, 0.53),
        (3.5, 3, -47.5, 0.1, 0.2, 100, 0.47, inf),
        (3.5, 3, -47.5, inf, 0.2, 100, 0.47, 0.53),
        (nan, nan, nan, nan, nan, nan, nan, nan),
        (-1e25, 3, 3, 1e25, 1e-5, 1e-5, 0, 1),
        (3, 3, 3, 1, 1, 1, -1e300, 1e300),
        (3.5, 3, -47.5, 0.1, 0.2, 100, 0.47, 0.53),  # a normal ray, last
    ]
    data = np.array(rays, dtype=np.float64)
    src, d = np.ascontiguousarray(data[:, :3]), np.ascontiguousarray(data[:, 3:6])
    tn, tf = np.ascontiguousarray(data[:, 6]), np.ascontiguousarray(data[:, 7])
    out, partials = np.empty(len(rays)), np.empty((len(rays), 8))
    fc.siddon_forward(flat, ni, nj, nk, src, d, tn, tf, out)
    fc.siddon_with_gradient(flat, ni, nj, nk, src, d, tn, tf, out, partials)
    fc.trilinear_forward(flat, ni, nj, nk, src, d, tn, tf, 1.0, out)
    fc.trilinear_with_gradient(flat, ni, nj, nk, src, d, tn, tf, 1.0, out, partials)
    assert abs(out[-1] - 0.02 * 0.06) < 1e-12, out[-1]
    print("kernels returned")
""")


def test_fused_kernels_return_on_extreme_and_non_finite_rays():
    """Called directly (no Detector, no clipping): every loop is bounded by the planes or samples of the box.

    Before the bound, the first ray alone ran 1e13 Siddon crossings / trilinear samples. Run in a subprocess so
    that a regression fails by timeout instead of hanging the test session.
    """
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], cwd=REPO, capture_output=True, text=True,
                              timeout=240, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("a fused kernel did not return within 240 s on extreme rays (an unbounded loop)")
    assert done.returncode == 0 and "kernels returned" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("step", [0.0, float("nan"), -1.0, float("inf")])
def test_fused_integrate_refuses_a_step_that_is_not_positive(tiny, step):
    from DiffRegLogic.drr.rays import detector_pixels, pixel_rays

    volume, detector, pose = tiny
    rays = pixel_rays(volume, detector, pose[None], detector_pixels(detector), torch.float64)
    with pytest.raises(InputError, match="step_voxels"):
        fused_cpu.integrate(volume.mu, rays, "trilinear", step)


_TRITON_SCRIPT = textwrap.dedent("""
    import math, os
    import torch
    from DiffRegLogic.drr import fused_triton as ft
    nan, inf = math.nan, math.inf
    rays = [(3, 3, 3, 1e13, 1, 1, 0, 1), (3, 3, 3, 1, 1, 1, 0, 1e13), (3.5, 3, -47.5, 0.1, 0.2, 100, nan, 0.53),
            (nan,) * 8, (3, 3, 3, 1, 1, 1, -1e30, 1e30), (3.5, 3, -47.5, 0.1, 0.2, 100, 0.47, 0.53)]
    data = torch.tensor(rays, dtype=torch.float32)
    src, d, tn, tf = data[:, :3].contiguous(), data[:, 3:6].contiguous(), data[:, 6].contiguous(), data[:, 7].contiguous()
    for renderer in ("siddon", "trilinear"):
        for grad in (False, True):
            out, _ = ft.launch(torch.full((6, 7, 8), 0.02), src, d, tn, tf, renderer, 1.0, grad)
            assert abs(float(out[-1]) - 0.0012) < 1e-6, out
    print("kernels returned")
""")


def test_triton_kernels_return_on_extreme_rays():
    """The same rays through the Triton kernels (CPU interpreter; on a GPU an uncapped count saturated to 2**31)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], cwd=REPO, capture_output=True, text=True,
                              timeout=240, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("a Triton kernel did not return within 240 s on extreme rays")
    if done.returncode != 0 and "unavailable" in done.stderr:
        pytest.skip(done.stderr[-300:])
    assert done.returncode == 0 and "kernels returned" in done.stdout, done.stderr[-2000:]


def test_the_smallest_memory_budget_still_recomputes_tiles(tiny):
    """At the 1 MB floor of MEMORY_MB_RANGE a detector of 900 pixels is checkpointed tile by tile: same values
    and gradients as one tile (the reference backend keeps per-crossing intermediates)."""
    volume, _, pose = tiny
    volume = Volume(volume.mu.double(), volume.affine)
    detector = Detector(30, 30, 100.0, (0.3, 0.3))
    results = []
    for options in ({"tile_rays": 64, "max_memory_mb": 1.0}, {"max_memory_mb": 1e6}):
        xi = pose.clone().requires_grad_(True)
        image = render(volume, detector, xi, backend="reference", **options)
        (image * torch.linspace(0, 1, image.numel(), dtype=image.dtype).reshape(image.shape)).sum().backward()
        results.append((image.detach(), xi.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    assert float(results[0][0].max()) > 0
