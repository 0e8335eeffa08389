"""The Triton renderers against the PyTorch reference renderers (float64: the independent truth).

Without CUDA these tests run Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set below before the kernels are first imported) on small cases; with CUDA
they run the compiled kernels on the GPU (same cases, same tolerances). They
are skipped when triton is not installed.

Tolerances (relative to the largest magnitude; the Triton kernels compute in
float32, the reference here in float64; measured worst case in brackets):

* values, float32 volume: 2e-5 [5e-6];
* gradients w.r.t. pose and intrinsics, float32: 3e-4 [6e-5]. The
  trilinear gradient tests step 0.7 voxels: with whole-voxel steps, a ray
  that enters through a face of its dominant axis samples exactly on voxel
  centres along that axis, a kink of the trilinear interpolant where float32
  and float64 rounding pick different one-sided slopes (differences up to
  5e-3 seen at step 1; the kernels are not wrong there, the derivative does
  not exist);
* float16 / bfloat16 storage: the kernel must match the reference on the
  rounded volume to the float32 tolerances above, and stay within 5e-4
  [1.2e-4] (float16) and 3e-3 [9e-4] (bfloat16) of the float32 DRR.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # before the first Triton render (the kernels are decorated when first imported, which is when Triton
    # chooses between compiling them and interpreting them)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from DiffRegLogic import render  # noqa: E402
from DiffRegLogic.drr import fused_triton, resolve_backend, siddon, trilinear  # noqa: E402
from DiffRegLogic.drr.jacobian import render_with_jacobian  # noqa: E402
from DiffRegLogic.drr.rays import RayBundle, clip_to_box  # noqa: E402
from DiffRegLogic.errors import InputError  # noqa: E402
from DiffRegLogic.geometry import Detector, clinical_to_pose, se3_exp  # noqa: E402
from DiffRegLogic.registration import RegistrationOptions  # noqa: E402
from DiffRegLogic.volume import Volume  # noqa: E402

from references import oblique_affine  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VALUE_TOL = 2e-5
GRAD_TOL = 3e-4


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def grid_volume(dtype=torch.float64, device="cpu") -> Volume:
    """Random mu on a 13 x 11 x 9 (I, J, K) oblique, anisotropic grid (7 x 5 x 9 mm voxels)."""
    mu = torch.rand((9, 11, 13), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.03
    return Volume(mu.to(dtype), oblique_affine(spacing=(7.0, 5.0, 9.0))).to(device)


# (detector, (primary, secondary, source distance mm)): a near-AP view, an oblique one with about a third of
# the rays missing the volume, another oblique one, and a lateral one whose rays are parallel to a grid axis.
# The source stays off voxel-boundary planes (there Siddon's gradient does not exist).
CASES = {
    "near-AP": (Detector(6, 7, 900.0, (14.0, 14.0)), (0.3, -0.2, 400.0)),
    "oblique, rays miss": (Detector(6, 7, 900.0, (30.0, 30.0), (1.0, 2.0)), (-65.0, 30.0, 400.0)),
    "oblique": (Detector(6, 7, 900.0, (14.0, 14.0), (1.0, 2.0)), (37.0, -22.0, 450.0)),
    "lateral": (Detector(6, 7, 900.0, (14.0, 14.0)), (90.0, 0.0, 400.0)),
}


def drr_and_gradients(volume: Volume, detector: Detector, pose: torch.Tensor, renderer: str, backend: str,
                      **kwargs):
    """DRR (B, H, W) and d(weighted sum)/d(pose (4, 4), sdd, pixel spacing (2,)), float64 leaves on the CPU."""
    p = pose.clone().requires_grad_(True)
    sdd = torch.tensor(float(detector.sdd), dtype=torch.float64, requires_grad=True)
    spacing = torch.tensor(detector.pixel_spacing, dtype=torch.float64, requires_grad=True)
    det = Detector(detector.rows, detector.cols, sdd, spacing, detector.principal_point)
    drr = render(volume, det, p, renderer, backend=backend, **kwargs).double().cpu()
    weights = torch.linspace(0.5, 1.5, drr.numel(), dtype=torch.float64).reshape(drr.shape)
    return drr.detach(), torch.autograd.grad((drr * weights).sum(), (p, sdd, spacing))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("renderer,step", [("siddon", 1.0), ("trilinear", 1.0), ("trilinear", 0.7)])
def test_values_and_gradients_match_the_reference(case, renderer, step):
    detector, angles = CASES[case]
    reference_volume = grid_volume()
    pose = clinical_to_pose(*angles, reference_volume.center)
    ref, ref_grads = drr_and_gradients(reference_volume, detector, pose, renderer, "reference", step_voxels=step)
    out, out_grads = drr_and_gradients(grid_volume(torch.float32, DEVICE), detector, pose, renderer, "triton",
                                       step_voxels=step)
    assert out.shape == ref.shape == (1, 6, 7) and float(ref.abs().max()) > 0
    assert rel(out, ref) < VALUE_TOL
    with torch.no_grad():  # the forward-only kernels, which build their rays themselves
        alone = render(grid_volume(torch.float32, DEVICE), detector, pose, renderer, step_voxels=step,
                       backend="triton").double().cpu()
    assert rel(alone, ref) < VALUE_TOL
    if case == "oblique, rays miss":
        assert 0.2 < float((ref == 0).double().mean()) < 0.8
        assert bool((out[ref == 0] == 0).all()) and bool((alone[ref == 0] == 0).all())  # misses integrate nothing
    if renderer == "trilinear" and step == 1.0:
        return  # gradients at whole-voxel steps: see the module docstring (kinks at voxel centres)
    for a, b in zip(out_grads, ref_grads):
        assert rel(a, b) < GRAD_TOL


def _bundle(src, directions, shape_ijk, device) -> RayBundle:
    src = torch.as_tensor(src, dtype=torch.float64)[None, None].expand(1, len(directions), 3).clone()
    d = torch.as_tensor(directions, dtype=torch.float64)[None]
    tn, tf = clip_to_box(src, d, shape_ijk)
    return RayBundle(*(t.to(device) for t in (src, d, torch.ones_like(tn), tn, tf)))


REFERENCE = {"siddon": siddon.integrate, "trilinear": lambda mu, rays: trilinear.integrate(mu, rays, 1.0)}


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_special_rays(renderer):
    """Axis-parallel rays, rays on box faces and on voxel centres, rays from inside, rays that miss."""
    mu = torch.rand((5, 6, 7), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shape_ijk = (7, 6, 5)
    directions = [(12.0, 0.0, 0.0), (12.0, 0.0, 0.5), (12.0, 3.5, 1.2), (12.0, -1.8, -3.3), (2.0, 0.1, 0.05),
                  (-5.0, 0.0, 0.0)]
    for src, dirs in (((-4.0, 2.3, 1.7), directions),
                      ((3.1, 2.7, 2.2), [(9.0, 4.0, -2.0), (0.0, 0.0, 7.0)]),  # from inside the volume
                      ((-4.0, -0.5, 1.0), [(12.0, 0.0, 0.0), (12.0, 0.0, 0.3)]),  # on the face j = -0.5
                      ((-4.0, 2.0, 1.0), [(12.0, 0.0, 0.0)])):  # on voxel centres
        ref = REFERENCE[renderer](mu, _bundle(src, dirs, shape_ijk, "cpu"))
        rays = _bundle(src, dirs, shape_ijk, DEVICE)
        out = fused_triton.integrate(mu.float().to(DEVICE), rays, renderer, 1.0).cpu()
        assert out.dtype == torch.float64  # the dtype of the rays
        torch.testing.assert_close(out, ref, rtol=VALUE_TOL, atol=VALUE_TOL * float(ref.abs().max()))
        if dirs is directions:
            assert float(out[0, -1]) == 0.0  # (-5, 0, 0) points away from the volume: misses


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_special_rays_gradients(renderer):
    """d value / d (source, direction) for axis-parallel and short rays, against the reference (trilinear: 0.7 voxel steps)."""
    mu = torch.rand((5, 6, 7), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shape_ijk = (7, 6, 5)
    grads = {}
    for backend in ("reference", "triton"):
        device = DEVICE if backend == "triton" else "cpu"
        s = torch.tensor([[[-4.0, 2.31, 1.73]]], dtype=torch.float64, device=device, requires_grad=True)
        d = torch.tensor([[[12.0, 0.0, 0.41], [12.0, 3.52, 1.21], [2.0, 0.13, 0.05], [9.0, 0.0, 0.0]]],
                         dtype=torch.float64, device=device, requires_grad=True)
        tn, tf = clip_to_box(s, d, shape_ijk)
        rays = RayBundle(s, d, torch.ones_like(tn), tn, tf)
        if backend == "triton":
            value = fused_triton.integrate(mu.float().to(device), rays, renderer, 0.7)
        elif renderer == "siddon":
            value = siddon.integrate(mu, rays)
        else:
            value = trilinear.integrate(mu, rays, 0.7)
        grads[backend] = [g.cpu() for g in torch.autograd.grad(value.sum(), (s, d))]
    for a, b in zip(grads["triton"], grads["reference"]):
        assert rel(a, b) < GRAD_TOL


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
@pytest.mark.parametrize("storage,tolerance", [(torch.float16, 5e-4), (torch.bfloat16, 3e-3)])
def test_half_precision_storage(renderer, storage, tolerance):
    """volume_dtype: exact on the rounded volume (float32 tolerances), and close to the float32 DRR."""
    detector, angles = CASES["oblique"]
    volume = grid_volume(torch.float32, DEVICE)
    rounded = Volume(volume.mu.to(storage).double().cpu(), volume.affine.cpu())
    pose = clinical_to_pose(*angles, rounded.center)
    step = 0.7
    ref, ref_grads = drr_and_gradients(rounded, detector, pose, renderer, "reference", step_voxels=step)
    out, out_grads = drr_and_gradients(volume, detector, pose, renderer, "triton", step_voxels=step,
                                       volume_dtype=storage)
    full = render(volume, detector, pose, renderer, step_voxels=step, backend="triton").double().cpu()
    assert rel(out, ref) < VALUE_TOL
    for a, b in zip(out_grads, ref_grads):
        assert rel(a, b) < GRAD_TOL
    assert 0 < rel(out, full) < tolerance  # the storage rounding is visible, and bounded
    # the converted copy is made once per volume
    assert fused_triton.storage(volume.mu, storage) is fused_triton.storage(volume.mu, storage)


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_batched_poses_tiles_and_determinism(renderer):
    """B poses in one call = each pose alone (reference); tiling and repeated runs change nothing (bitwise)."""
    reference_volume = grid_volume()
    volume = grid_volume(torch.float32, DEVICE)
    detector = Detector(5, 6, 900.0, (16.0, 16.0), (1.5, 2.0))
    poses = torch.stack([clinical_to_pose(a, b, c, reference_volume.center)
                         for a, b, c in ((10.0, 5.0, 420.0), (-40.0, 20.0, 380.0), (100.0, -10.0, 450.0))])
    step = 0.7
    ref, ref_grads = drr_and_gradients(reference_volume, detector, poses, renderer, "reference", step_voxels=step)
    out, out_grads = drr_and_gradients(volume, detector, poses, renderer, "triton", step_voxels=step)
    assert out.shape == (3, 5, 6)
    assert rel(out, ref) < VALUE_TOL
    with torch.no_grad():
        alone = render(volume, detector, poses, renderer, step_voxels=step, backend="triton")
    assert alone.shape == (3, 5, 6) and rel(alone, ref) < VALUE_TOL
    for a, b in zip(out_grads, ref_grads):
        assert rel(a, b) < GRAD_TOL
    again, again_grads = drr_and_gradients(volume, detector, poses, renderer, "triton", step_voxels=step)
    tiled, tiled_grads = drr_and_gradients(volume, detector, poses, renderer, "triton", step_voxels=step,
                                           tile_rays=7)
    for x, y in ((again, out), (tiled, out), *zip(again_grads, out_grads)):
        assert torch.equal(x, y)
    for x, y in zip(tiled_grads, out_grads):  # autograd sums the tiles' contributions to the pose in another order
        assert rel(x, y) < 1e-6


def test_jacobian_matches_the_reference():
    reference_volume = grid_volume()
    volume = grid_volume(torch.float32, DEVICE)
    detector, angles = CASES["oblique"]
    base = clinical_to_pose(*angles, reference_volume.center)

    def pose_of(params):
        return base.to(params) @ se3_exp(params)

    params = torch.tensor([[0.01, -0.02, 0.015, 3.0, -2.0, 4.0]], dtype=torch.float64)
    drr_r, jac_r = render_with_jacobian(reference_volume, detector, pose_of, params, "siddon", backend="reference")
    drr_t, jac_t = render_with_jacobian(volume, detector, pose_of, params.to(DEVICE), "siddon", backend="triton")
    assert drr_t.dtype == torch.float32 and jac_t.shape == (1, 6, 7, 6)
    assert rel(drr_t, drr_r) < VALUE_TOL and rel(jac_t, jac_r) < GRAD_TOL


def test_backend_choice_and_errors(monkeypatch):
    volume = grid_volume(torch.float32, DEVICE)
    detector = Detector(4, 4, 900.0, (14.0, 14.0))
    pose = clinical_to_pose(0.3, -0.2, 400.0, volume.center.cpu())
    RegistrationOptions(backend="triton").validate()  # a registration can ask for it
    from DiffRegLogic.drr import rays_per_tile

    # memory per ray, not per sample: a 1536 x 1536 forward + backward is one tile within the default budget
    assert rays_per_tile(volume, 1, "siddon", backend="triton") >= 1536 * 1536
    assert resolve_backend("auto", volume.mu) == ("triton" if DEVICE == "cuda" else "fused")
    with pytest.raises(InputError, match="float32, float16 or bfloat16"):
        render(Volume(volume.mu.double(), volume.affine), detector, pose, backend="triton")
    graded = Volume(volume.mu.clone().requires_grad_(True), volume.affine)
    with pytest.raises(InputError, match="no gradient w.r.t. mu"):
        render(graded, detector, pose, backend="triton")
    assert resolve_backend("auto", graded.mu, mu_grad=True) == "reference"
    with pytest.raises(InputError, match="storage option of the 'triton' backend"):
        render(volume, detector, pose, backend="reference", volume_dtype=torch.float16)
    with pytest.raises(InputError, match="volume_dtype must be"):
        render(volume, detector, pose, backend="triton", volume_dtype=torch.float64)
    cpu_volume = grid_volume(torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="TRITON_INTERPRET=1"):
        render(cpu_volume, detector, pose, backend="triton")
    monkeypatch.setattr(fused_triton, "available", lambda: False)
    with pytest.raises(InputError, match="triton is not installed"):
        render(volume, detector, pose, backend="triton")
    assert resolve_backend("auto", volume.mu) in ("fused", "reference")  # auto never fails over a missing triton


def test_kernels_compile_for_hopper_without_spills():
    """The interpreter does not run Triton's compiler: compile every variant for sm_90 (no GPU needed) in a
    fresh process without TRITON_INTERPRET, and check that no thread spills to local memory and each uses at
    most 64 registers (128-thread programs: at least half of an SM's threads resident)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script), "--storage", "fp32", "bf16"], capture_output=True,
                          text=True, env=env, timeout=300)
    if done.returncode == 3:  # see compile_kernels.py: another triton API, or no NVIDIA backend
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 12 and all(row["ptx_chars"] > 0 for row in rows)
    if any(row.get("registers") is None for row in rows):
        pytest.skip("no cuobjdump beside this triton: compiled, resources not read")
    for row in rows:
        assert row["local_bytes"] == 0, row
        assert row["registers"] <= 64, row


def test_registration_follows_the_fused_backend():
    """A registration (Adam on ZNCC, 10 iterations) with the Triton backend takes the same path as with the
    numba one: final poses within 1e-3 mm mTRE of each other (measured 1e-5 mm), and the error shrinks."""
    from DiffRegLogic import evaluation
    from DiffRegLogic.volume.phantoms import chest_phantom
    from DiffRegLogic.registration import perturb_pose, random_motions, register

    volume = chest_phantom(shape_ijk=(24, 22, 20), spacing=(14.0, 13.5, 14.5), smooth_sigma_voxels=1.0,
                           dtype=torch.float32)
    detector = Detector(12, 12, 1000.0, (24.0, 24.0))
    target = clinical_to_pose(10.0, 5.0, 600.0, volume.center)
    xray = render(Volume(volume.mu.double(), volume.affine), detector, target, "siddon", backend="reference")[0]
    start = perturb_pose(target, random_motions(1, 5.0, 10.0, 0), volume.center.double())[0]
    points = evaluation.target_points(volume, 500)
    poses = {}
    for backend, device in (("fused", "cpu"), ("triton", DEVICE)):
        options = RegistrationOptions(backend=backend, levels=(1,), max_iterations=10)
        poses[backend] = register(volume.to(device), xray.float(), detector, start, options).pose.cpu()
    assert float(evaluation.mtre(poses["triton"], poses["fused"], points)) < 1e-3
    assert float(evaluation.mtre(poses["triton"], target, points)) < 0.6 * float(evaluation.mtre(start, target, points))


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_polychromatic_volume_renders_through_triton(renderer):
    """A MaterialVolume's density channels through the Triton kernels: the same signal and pose gradient as the
    float64 reference (the energy sum is the same PyTorch code on both paths)."""
    from DiffRegLogic.physics.materials import MaterialVolume
    from DiffRegLogic.volume.phantoms import chest_phantom_hu
    from DiffRegLogic.physics import Beam, tube_spectrum

    hu, affine = chest_phantom_hu(shape_ijk=(12, 11, 10), spacing=(20.0, 20.0, 24.0))
    beam = Beam(tube_spectrum(80, n_bins=20))
    truth = MaterialVolume.from_hu(hu, affine, beam, dtype=torch.float64)
    ours = MaterialVolume.from_hu(hu, affine, beam, dtype=torch.float32).to(DEVICE)
    detector = Detector(6, 7, 1000.0, (30.0, 30.0))
    pose = clinical_to_pose(10.0, -5.0, 600.0, truth.center)
    x = torch.tensor([0.01, -0.02, 0.015, 2.0, -1.0, 3.0], dtype=torch.float64)
    step = 0.7 if renderer == "trilinear" else 1.0
    results = {}
    for name, volume, backend in (("reference", truth, "reference"), ("triton", ours, "triton")):
        p = x.clone().to(volume.mu.device).requires_grad_(True)
        img = render(volume, detector, se3_exp(p) @ pose.to(p.device), renderer, backend=backend, step_voxels=step)
        img.sum().backward()
        results[name] = (img.detach(), p.grad)
    assert results["reference"][0].max() > 1.0
    assert rel(results["triton"][0], results["reference"][0]) < VALUE_TOL
    assert rel(results["triton"][1], results["reference"][1]) < GRAD_TOL
    with torch.no_grad():  # the no-autograd path too
        plain = render(ours, detector, se3_exp(x).to(DEVICE) @ pose.to(DEVICE), renderer, backend="triton",
                       step_voxels=step)
    assert rel(plain, results["reference"][0]) < VALUE_TOL
