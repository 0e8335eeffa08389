"""Polychromatic, material-aware DRRs and X-ray realism against independent truths.

* mass attenuation against NIST's tabulated values (Hubbell and Seltzer,
  NIST Standard Reference Database 126, Table 4: water, cortical bone
  (ICRU-44), dry air) — the shipped table comes from other elemental data
  (xraydb's), so this is a check, not a copy;
* spectra against the mean energies spekpy itself reported;
* the monochromatic limit against the monochromatic renderer;
* a bone box against its closed-form chord and Beer-Lambert per energy;
* gradients against finite differences (gradcheck), tiles against one tile,
  the fused backend against the reference, the LM Jacobian against autograd;
* Poisson noise, blur and scatter against their closed-form statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, Volume, render
from DiffRegLogic.drr.jacobian import render_with_jacobian
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import se3_exp
from DiffRegLogic.drr.radiograph import simulate_radiograph
from DiffRegLogic.physics import (Beam, DensityCalibration, MaterialThresholds, MaterialVolume, Spectrum,
                                  mass_attenuation, material_densities, monochromatic, nominal_density, tube_kvps,
                                  tube_spectrum)
from DiffRegLogic.physics.realism import Realism, apply_realism, gaussian_filter, heel_gain
from DiffRegLogic.physics.tables import _table
from DiffRegLogic.volume import HUToMu, hu_from_mu
from DiffRegLogic.volume.phantoms import chest_phantom_hu
from DiffRegLogic.volume.io import read_volume, write_volume

from references import look_at_pose

# NIST X-ray mass attenuation coefficients mu/rho (cm^2/g), Table 4, at 30, 60 and 100 keV
NIST = {
    "water": (0.3756, 0.2059, 0.1707),
    "bone": (1.331, 0.3148, 0.1855),
    "air": (0.3538, 0.1875, 0.1541),
}


def small_case(dtype=torch.float64, shape=(18, 16, 14), spacing=(14.0, 14.0, 17.0)):
    hu, affine = chest_phantom_hu(shape_ijk=shape, spacing=spacing)
    volume = MaterialVolume.from_hu(hu, affine, Beam(tube_spectrum(80, n_bins=24)), dtype=dtype)
    center = volume.center.numpy()
    pose = look_at_pose(center + np.array([3.0, -600.0, 7.0]), center)
    return volume, Detector(9, 11, 1000.0, (25.0, 22.0)), pose


# ---------------------------------------------------------------- physics tables


@pytest.mark.parametrize("material", sorted(NIST))
def test_mass_attenuation_matches_nist(material):
    ours = mass_attenuation(material, torch.tensor([30.0, 60.0, 100.0]))
    nist = torch.tensor(NIST[material], dtype=torch.float64)
    assert torch.allclose(ours, nist, rtol=0.01), (ours, nist)
    # between table points (log-log interpolation) it stays within 1 % of the neighbouring NIST values' trend
    mid = mass_attenuation(material, torch.tensor([45.0, 80.0]))
    assert (mid < mass_attenuation(material, torch.tensor([30.0, 60.0]))).all()


def test_spectra_are_normalised_and_match_spekpy_mean_energy():
    table = _table("tube_spectra.json")
    assert tube_kvps() == (60, 70, 80, 90, 100, 110, 120)
    for kvp in tube_kvps():
        s = tube_spectrum(kvp)
        assert math.isclose(sum(s.fluence), 1.0, rel_tol=1e-12)
        assert max(s.energies_kev) < kvp
        assert s.mean_energy_kev == pytest.approx(table["mean_energy_keV"][str(kvp)], rel=1e-3)
        assert len(s.energies_kev) >= 20
    means = [tube_spectrum(k).mean_energy_kev for k in tube_kvps()]
    assert all(b > a for a, b in zip(means, means[1:]))


def test_filtration_and_rebinning():
    s = tube_spectrum(80)
    harder = tube_spectrum(80, extra_filtration_mm_al=3.0)
    assert harder.mean_energy_kev > s.mean_energy_kev + 1.0
    # filtering by hand with the aluminium table gives the same fluence
    e, f = s.tensors()
    by_hand = f * torch.exp(-mass_attenuation("aluminium", e) * nominal_density("aluminium") * 0.3)
    assert torch.allclose(harder.tensors()[1], by_hand / by_hand.sum(), rtol=1e-12)
    coarse = tube_spectrum(80, n_bins=20)
    assert len(coarse.energies_kev) == 20
    assert coarse.mean_energy_kev == pytest.approx(s.mean_energy_kev, rel=1e-9)  # fluence-weighted groups


def test_physics_input_errors():
    with pytest.raises(InputError, match="no tube spectrum for 75"):
        tube_spectrum(75)
    with pytest.raises(InputError, match="unknown material 'lead'"):
        mass_attenuation("lead", 50.0)
    with pytest.raises(InputError, match="within 1.0-150.0 keV"):
        mass_attenuation("water", 200.0)
    with pytest.raises(InputError, match="non-negative"):
        Spectrum((50.0, 60.0), (1.0, -1.0))
    with pytest.raises(InputError, match="detector response"):
        Beam(monochromatic(60), response="film")
    with pytest.raises(InputError, match="unknown output"):
        Beam(monochromatic(60), output="log")


# ---------------------------------------------------------------- materials


def test_segmentation_and_density_calibration():
    hu = torch.tensor([-1000.0, -900.0, -800.0, -799.0, 0.0, 350.0, 351.0, 1000.0, 2000.0], dtype=torch.float64)
    hu = hu.reshape(1, 1, 9)
    hu = hu.expand(2, 2, 9)
    densities, names = material_densities(hu)
    assert names == ("air", "soft_tissue", "bone")
    rho = DensityCalibration()(hu[0, 0])
    expected_rho = torch.tensor([0.0012, 0.10108, 0.20096, 0.2019588, 1.0, 1.21, 1.2106, 1.6, 2.2], dtype=torch.float64)
    assert torch.allclose(rho, expected_rho, rtol=1e-6)
    label = densities[:, 0, 0].argmax(0)
    assert label.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.allclose(densities.sum(0), DensityCalibration()(hu))  # each voxel in exactly one material
    # smooth assignment: weights sum to 1 and change gradually across a threshold
    w = MaterialThresholds(soft_width_hu=20.0).weights(torch.tensor([-820.0, -800.0, -780.0, 350.0]))
    assert torch.allclose(w.sum(0), torch.ones(4, dtype=w.dtype))
    assert w[0, 1] == pytest.approx(0.5, abs=1e-6) and w[2, 3] == pytest.approx(0.5, abs=1e-6)
    assert 0.5 < w[0, 0] < 0.9 and 0.1 < w[0, 2] < 0.5


def test_hu_from_mu_inverts_the_volume_conversion():
    hu = torch.linspace(-1000, 2500, 57, dtype=torch.float64)
    for conv in (HUToMu(), HUToMu(mu_water=0.019, bone_hu=1200.0, mu_bone=0.05)):
        assert torch.allclose(hu_from_mu(conv(hu), conv), hu, atol=1e-9)


def test_implants_from_a_label_map():
    hu = torch.full((4, 5, 6), 40.0)
    labels = torch.zeros((4, 5, 6), dtype=torch.int64)
    labels[1:3, 2, 2:4] = 7
    densities, names = material_densities(hu, labels=labels, implants={7: "titanium"})
    assert names == ("air", "soft_tissue", "bone", "titanium")
    inside = labels == 7
    assert torch.allclose(densities[3][inside], torch.tensor(nominal_density("titanium"), dtype=densities.dtype))
    assert densities[:3][:, inside].abs().max() == 0
    assert densities[1][~inside].min() > 1.0
    with pytest.raises(InputError, match="need a label map"):
        material_densities(hu, implants={7: "titanium"})
    with pytest.raises(InputError, match="unknown implant material"):
        material_densities(hu, labels=labels, implants={7: "unobtanium"})
    with pytest.raises(InputError, match="no voxel carries implant label 3"):
        material_densities(hu, labels=labels, implants={3: "titanium"})


def test_material_volume_input_errors():
    hu, affine = chest_phantom_hu(shape_ijk=(6, 5, 4), spacing=(10.0, 10.0, 10.0))
    bad = hu.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="1 NaN"):
        MaterialVolume.from_hu(bad, affine)
    with pytest.raises(InputError, match="must be 3D"):
        MaterialVolume.from_hu(hu[0], affine)
    with pytest.raises(InputError, match="below bone_min_hu"):
        MaterialThresholds(air_max_hu=400.0)
    with pytest.raises(InputError, match="increasing HU"):
        DensityCalibration(((0.0, 1.0), (-10.0, 0.9)))
    volume = MaterialVolume.from_hu(hu, affine)
    with pytest.raises(InputError, match="2 density channels but 3"):
        MaterialVolume.from_densities(volume.densities[:2], volume.materials, affine)


def test_input_is_not_modified():
    hu, affine = chest_phantom_hu(shape_ijk=(8, 7, 6), spacing=(10.0, 10.0, 10.0))
    before = hu.clone()
    volume = MaterialVolume.from_hu(hu, affine)
    volume.downsample(2.0)
    assert torch.equal(hu, before)


# ---------------------------------------------------------------- renderer


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_monochromatic_limit_equals_the_monochromatic_renderer(renderer, backend):
    """A delta spectrum at E0: -log(I/I0) = line integral of mu(E0) = sum_m mu_m(E0) rho_m / 10 (1/mm)."""
    volume, detector, pose = small_case()
    mono = volume.with_beam(Beam(monochromatic(60.0)))
    ours = render(mono, detector, pose, renderer, backend=backend)
    mu = sum(float(mass_attenuation(m, 60.0)) * mono.densities[i] for i, m in enumerate(mono.materials)) / 10
    expected = render(Volume(mu, volume.affine), detector, pose, renderer, backend="reference")
    assert expected.max() > 1.0
    assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12)
    # photon counting and energy integrating agree for one energy; intensity = exp(-line integral)
    counting = volume.with_beam(Beam(monochromatic(60.0), response="photon_counting", output="intensity"))
    assert torch.allclose(render(counting, detector, pose, renderer, backend=backend), torch.exp(-expected), rtol=1e-9)


def bone_box(thickness_mm: float, beam: Beam):
    """A bone slab of ``thickness_mm`` along the beam (AP), 1 mm voxels, and an AP view through it."""
    n = int(thickness_mm)
    densities = torch.zeros((3, n, 6, 6), dtype=torch.float64)
    densities[2] = nominal_density("bone")
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    volume = MaterialVolume.from_densities(densities, ("air", "soft_tissue", "bone"), affine, beam)
    center = volume.center.numpy()
    pose = look_at_pose(center + np.array([0.0, 0.0, -800.0]), center, up=(0.0, 1.0, 0.0))
    return volume, Detector(3, 3, 1200.0, (0.5, 0.5)), pose


def test_bone_box_matches_beer_lambert_per_energy_and_hardens_the_beam():
    beam = Beam(tube_spectrum(80))
    e, f = beam.spectrum.tensors()
    w = f * e / (f * e).sum()
    effective = []
    for thickness in (2, 8, 32):
        volume, detector, pose = bone_box(thickness, beam)
        signal = render(volume, detector, pose, "siddon")[0]
        # the centre ray runs exactly along k through the whole slab: chord = thickness (mm)
        mass_path = nominal_density("bone") * thickness / 10.0
        expected = -math.log(float((w * torch.exp(-mass_attenuation("bone", e) * mass_path)).sum()))
        assert float(signal[1, 1]) == pytest.approx(expected, rel=1e-9)
        effective.append(float(signal[1, 1]) / thickness)
    # beam hardening: attenuation per mm of bone falls with thickness; a monochromatic beam's does not
    assert effective[0] > effective[1] > effective[2]
    assert effective[2] < 0.8 * effective[0]
    mono = [float(render(*bone_box(t, Beam(monochromatic(60.0))), "siddon")[0, 1, 1]) / t for t in (2, 32)]
    assert mono[0] == pytest.approx(mono[1], rel=1e-9)


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_fused_matches_reference_values_and_gradients(renderer):
    volume, detector, pose = small_case()
    x = torch.tensor([0.02, -0.03, 0.01, 4.0, -3.0, 2.0], dtype=torch.float64)
    out = {}
    for backend in ("reference", "fused"):
        p = x.clone().requires_grad_(True)
        img = render(volume, detector, se3_exp(p) @ pose, renderer, backend=backend)
        (img * torch.linspace(0, 1, img.numel(), dtype=img.dtype).reshape(img.shape)).sum().backward()
        out[backend] = (img.detach(), p.grad)
    assert torch.allclose(out["fused"][0], out["reference"][0], rtol=1e-8, atol=1e-10)
    assert torch.allclose(out["fused"][1], out["reference"][1], rtol=1e-5, atol=1e-8)


def test_gradcheck_with_respect_to_pose():
    volume, detector, pose = small_case()
    weights = torch.linspace(0.5, 1.5, detector.rows * detector.cols, dtype=torch.float64)

    def loss(x):
        return (render(volume, detector, se3_exp(x) @ pose, "trilinear", backend="fused").reshape(-1) * weights).sum()

    x = torch.tensor([0.01, 0.02, -0.015, 2.0, -1.0, 3.0], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_tiles_do_not_change_results():
    volume, detector, pose = small_case()
    whole = render(volume, detector, torch.stack([pose, se3_exp(torch.full((6,), 0.01, dtype=torch.float64)) @ pose]),
                   "siddon")
    tiled = render(volume, detector, torch.stack([pose, se3_exp(torch.full((6,), 0.01, dtype=torch.float64)) @ pose]),
                   "siddon", tile_rays=7)
    assert whole.shape == (2, 9, 11)
    assert torch.equal(whole, tiled)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_jacobian_matches_autograd(backend):
    volume, detector, pose = small_case()

    def pose_of(params):
        return se3_exp(params) @ pose

    params = torch.tensor([[0.01, -0.02, 0.03, 1.0, 2.0, -1.5]], dtype=torch.float64)
    drr, jac = render_with_jacobian(volume, detector, pose_of, params, "trilinear", backend=backend)
    expected = torch.autograd.functional.jacobian(
        lambda p: render(volume, detector, pose_of(p), "trilinear", backend=backend), params)
    assert torch.allclose(drr, render(volume, detector, pose_of(params), "trilinear", backend=backend))
    assert torch.allclose(jac[0], expected[0, :, :, 0], rtol=1e-6, atol=1e-9)


def test_downsampled_material_volume_keeps_mass():
    volume, _, _ = small_case()
    coarse = volume.downsample(2.0)
    assert isinstance(coarse, MaterialVolume) and coarse.beam == volume.beam
    # average pooling by exactly 2 keeps each channel's total mass (voxel volume x 8)
    assert torch.allclose(coarse.densities.sum((1, 2, 3)) * 8, volume.densities.sum((1, 2, 3)), rtol=1e-9)
    assert torch.allclose(coarse.mu, torch.einsum("m,mkji->kji", volume.beam.effective_mu_per_density(
        volume.materials).to(coarse.densities.dtype), coarse.densities) / 10, rtol=1e-9)


# ---------------------------------------------------------------- realism


def flat_detector(n=256):
    return Detector(n, n, 1000.0, (0.5, 0.5))


def test_poisson_noise_variance_equals_mean():
    detector = flat_detector()
    photons = 1000.0
    intensity = torch.full((1, 256, 256), 0.3, dtype=torch.float64)
    noisy = apply_realism(intensity, detector, Realism(photons_per_pixel=photons, seed=3))
    counts = noisy * photons
    assert torch.equal(counts, counts.round())
    mean, var = float(counts.mean()), float(counts.var())
    # n = 65536 pixels: the standard errors are 0.07 % (mean) and 0.55 % (variance) of 300
    assert mean == pytest.approx(300.0, rel=0.005)
    assert var == pytest.approx(mean, rel=0.03)
    again = apply_realism(intensity, detector, Realism(photons_per_pixel=photons, seed=3))
    other = apply_realism(intensity, detector, Realism(photons_per_pixel=photons, seed=4))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_blur_scatter_and_heel_against_closed_forms():
    detector = flat_detector(128)
    g = torch.Generator().manual_seed(0)
    white = torch.randn((1, 128, 128), generator=g, dtype=torch.float64)
    sigma = 3.0
    blurred = gaussian_filter(white, sigma, sigma)
    # white noise through a unit-sum Gaussian of sigma pixels: variance x 1 / (4 pi sigma^2)
    inner = blurred[:, 20:-20, 20:-20]
    assert float(inner.var()) == pytest.approx(1 / (4 * math.pi * sigma ** 2), rel=0.15)
    flat = torch.full((1, 128, 128), 0.4, dtype=torch.float64)
    assert torch.allclose(gaussian_filter(flat, 5.0, 40.0), flat, rtol=1e-12)
    # a uniform field gets a scatter-to-primary ratio of exactly scatter_fraction
    scattered = apply_realism(flat, detector, Realism(scatter_fraction=0.25, scatter_sigma_mm=30.0))
    assert torch.allclose(scattered, flat * 1.25, rtol=1e-12)
    # PSF in mm: 1.5 mm on 0.5 mm pixels = 3 pixels
    assert torch.allclose(apply_realism(white, detector, Realism(blur_mm=1.5)), blurred, atol=1e-12)
    gain = heel_gain(detector, 0.2)
    assert float(gain[0]) == pytest.approx(0.8) and float(gain[-1]) == pytest.approx(1.2)
    heeled = apply_realism(flat, detector, Realism(heel=0.2))
    assert torch.allclose(heeled[0, 5], 0.4 * gain)
    assert Realism().is_identity and torch.equal(apply_realism(flat, detector, Realism()), flat)


def test_realism_input_errors():
    with pytest.raises(InputError, match="photons_per_pixel"):
        Realism(photons_per_pixel=0)
    with pytest.raises(InputError, match="blur_mm"):
        Realism(blur_mm=-1)
    with pytest.raises(InputError, match="heel"):
        Realism(heel=1.5)
    with pytest.raises(InputError, match=r"intensity must be \(B, 4, 4\)"):
        apply_realism(torch.ones(1, 3, 3), flat_detector(4), Realism())


def test_simulated_radiograph():
    volume, detector, pose = small_case()
    clean = render(volume, detector, pose, "siddon")
    same = simulate_radiograph(volume, detector, pose, Realism(), "siddon")
    assert torch.allclose(same, clean, rtol=1e-9)
    noisy = simulate_radiograph(volume, detector, pose, Realism(photons_per_pixel=1e5, seed=1), "siddon")
    # at 1e5 photons the noise in -log I is about 1 / sqrt(N0 I)
    expected_sd = torch.sqrt(torch.exp(clean) / 1e5)
    z = (noisy - clean) / expected_sd
    assert 0.6 < float(z.std()) < 1.5 and abs(float(z.mean())) < 0.5
    mono = simulate_radiograph(Volume(volume.mu, volume.affine), detector, pose, Realism(), "siddon", output="intensity")
    assert torch.allclose(mono, torch.exp(-render(Volume(volume.mu, volume.affine), detector, pose, "siddon")))


# ---------------------------------------------------------------- command line and experiment


def test_cli_polychromatic_render_matches_the_python_api(tmp_path):
    import json

    from DiffRegLogic.cli import main

    hu, affine = chest_phantom_hu(shape_ijk=(20, 18, 16), spacing=(16.0, 16.0, 18.0))
    write_volume(tmp_path / "ct.nrrd", hu.numpy().astype(np.float32), affine.numpy())
    volume = read_volume(tmp_path / "ct.nrrd")
    center = volume.center.numpy()
    pose = look_at_pose(center + np.array([5.0, -600.0, 0.0]), center)
    geometry = {"source_to_detector_mm": 1000.0, "rows": 12, "cols": 14, "pixel_spacing_mm": [20.0, 20.0]}
    (tmp_path / "g.json").write_text(json.dumps(geometry))
    (tmp_path / "p.json").write_text(json.dumps({"camera_from_world": pose.tolist()}))
    common = ["render", "--ct", str(tmp_path / "ct.nrrd"), "--geometry", str(tmp_path / "g.json"),
              "--pose", str(tmp_path / "p.json"), "--device", "cpu", "--renderer", "polychromatic", "--kvp", "100",
              "--energy-bins", "20"]
    materials = MaterialVolume.from_volume(volume, Beam(tube_spectrum(100, n_bins=20)))
    detector = Detector(12, 14, 1000.0, (20.0, 20.0))
    assert main(common + ["--out", str(tmp_path / "poly.npy")]) == 0
    expected = render(materials, detector, pose, "siddon")[0]
    np.testing.assert_allclose(np.load(tmp_path / "poly.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)
    # realism flags: the same seeded simulation as the Python API
    noisy = common + ["--noise-photons", "1e4", "--scatter-fraction", "0.2", "--signal", "intensity"]
    assert main(noisy + ["--out", str(tmp_path / "a.npy")]) == 0
    want = simulate_radiograph(materials, detector, pose, Realism(photons_per_pixel=1e4, scatter_fraction=0.2),
                               "siddon", "intensity")[0]
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), want.numpy(), rtol=1e-5)
    assert main(common + ["--implant", "1=titanium", "--out", str(tmp_path / "c.npy")]) == 2  # needs --labels
    assert not (tmp_path / "c.npy").exists()


def test_polychromatic_experiment_writes_its_report(tmp_path):
    from DiffRegLogic import experiments
    from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
    from DiffRegLogic.volume.phantoms import chest_phantom

    volume = chest_phantom().downsample(4)
    detector = Detector(**DEMO_DETECTOR).downsample(8)
    target, _ = demo_poses(volume.center.to(torch.float64))
    report = experiments.polychromatic(volume, detector, target, tmp_path, beam=Beam(tube_spectrum(80, n_bins=20)),
                                       n=2, max_rotation_deg=2.0, max_translation_mm=4.0,
                                       options=dict(levels=(1.0,), max_iterations=15), log=None)
    rows = (tmp_path / "polychromatic.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 and rows[0].startswith("model,start")
    summary = report["summary"]
    assert set(summary) == {"monochromatic", "polychromatic"}
    # without scatter, the polychromatic model agrees better with the polychromatic X-ray at the true pose
    assert summary["polychromatic"]["ncc_at_truth"] > summary["monochromatic"]["ncc_at_truth"]
    assert all(0 <= s["success_rate"] <= 1 for s in summary.values())
    assert "| polychromatic |" in report["markdown"].read_text()
    assert report["png"].stat().st_size > 1000
    with pytest.raises(InputError, match="monochromatic Volume"):
        experiments.polychromatic(MaterialVolume.from_volume(volume), detector, target, tmp_path, log=None)


def test_cli_demo_and_register_with_the_polychromatic_renderer(tmp_path):
    import json

    from DiffRegLogic.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--renderer", "polychromatic", "--energy-bins", "20", "--levels", "8", "4",
                 "--iterations", "60", "--quiet", "--device", "cpu"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["error_after"]["mtre_mm"] < 0.25 * result["error_before"]["mtre_mm"]
    # register the demo's (polychromatic) X-ray from its start with the polychromatic model
    assert main(["register", "--ct", "phantom", "--xray", str(out / "target.npy"), "--geometry", str(out / "geometry.json"),
                 "--init", str(out / "start_pose.json"), "--truth", str(out / "target_pose.json"), "--out",
                 str(tmp_path / "r.json"), "--renderer", "polychromatic", "--energy-bins", "20", "--levels", "8", "4",
                 "--iterations", "60", "--quiet", "--device", "cpu"]) == 0
    registered = json.loads((tmp_path / "r.json").read_text())
    assert registered["error"]["mtre_mm"] < 0.25 * registered["error_initial"]["mtre_mm"]
