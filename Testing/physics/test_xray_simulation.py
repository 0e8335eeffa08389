"""The realistic X-ray bench: each degradation changes the image as documented, seeds reproduce it.

Truth: a CT of air (mu = 0) is a flat field I = 1, so scatter makes it
exactly 1 + f; collimation adds exactly -log(transmission) outside the
field and the heel effect -log(gain); the polychromatic primary equals the
renderer's own polychromatic model (`drr.render` of a `MaterialVolume`),
and with a disc of metal the energy sum done by hand; Poisson noise has
variance 1/N0 on a flat field; the cropped CT keeps exactly the central
slices of the full one; an explicit screw's core exceeds the CT's largest
line integral by mu_Ti x its chord.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
from DiffRegLogic.geometry import Detector
from DiffRegLogic.physics import REALISM_PRESETS
from DiffRegLogic.physics.beam import Beam
from DiffRegLogic.physics.instruments import Disc, Instrument, Rod
from DiffRegLogic.physics.materials import MaterialVolume
from DiffRegLogic.physics.processing import Collimation, Processing, collimation_mask
from DiffRegLogic.physics.realism import Realism, heel_gain
from DiffRegLogic.physics.spectra import tube_spectrum
from DiffRegLogic.physics.tables import mass_attenuation, nominal_density
from DiffRegLogic.physics.instrument_placement import Instruments
from DiffRegLogic.physics.xray_simulation import (PRESETS, Degradation, crop_axial, effective_energy_kev, preset,
                                                  simulate_xray)
from DiffRegLogic.volume.ct import Volume
from DiffRegLogic.volume.phantoms import chest_phantom_hu

DETECTOR = Detector(**DEMO_DETECTOR).downsample(200 / 64)  # 64 x 64, 9.375 mm pixels


@pytest.fixture(scope="module")
def ct():
    hu, affine = chest_phantom_hu((64, 56, 48), (5.2, 5.2, 6.0))
    pose, _ = demo_poses(Volume.from_hu(hu, affine).center)
    return hu, affine, pose


@pytest.fixture(scope="module")
def air(ct):
    return torch.full((24, 28, 32), -1000.0), ct[1]


def _sim(ct, degradation=None, **kw):
    hu, affine, pose = ct
    return simulate_xray(hu, affine, DETECTOR, pose, degradation, dtype=torch.float64, **kw)


def test_scatter_adds_exactly_its_fraction_on_a_flat_field(ct, air):
    for f in (0.1, 0.3, 0.5):
        out = _sim((*air, ct[2]), Degradation(Realism(scatter_fraction=f)))
        assert torch.allclose(out.line_integral, torch.full(DETECTOR.shape, -math.log(1 + f), dtype=torch.float64),
                              atol=1e-12)
    assert preset("scatter").realism.scatter_fraction == 0.5


def test_noise_is_poisson_and_the_seed_reproduces_it(ct, air):
    flat = (*air, ct[2])
    a = _sim(flat, preset("noise", seed=3))
    b = _sim(flat, preset("noise", seed=3))
    c = _sim(flat, preset("noise", seed=4))
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    intensity = torch.exp(-a.line_integral)
    assert float(intensity.mean()) == pytest.approx(1.0, abs=4 / math.sqrt(1e3 * intensity.numel()))
    assert float(intensity.var()) == pytest.approx(1 / 1e3, rel=0.15)  # Poisson(N0) / N0: variance 1 / N0
    assert len(torch.unique(intensity * 1e3)) > 10  # photon counts, not a constant


def test_collimation_and_heel_are_closed_forms_on_the_clean_drr(ct):
    out = _sim(ct, preset("collimation"))
    field = collimation_mask(DETECTOR, Collimation("rectangle", (0.7, 0.8)))
    assert torch.equal(out.collimation_mask, field)
    assert int(field.sum()) == 44 * 52  # |r - 31.5| <= 22.4 -> 44 rows, |c - 31.5| <= 25.6 -> 52 columns
    expected = out.clean + torch.where(field, 0.0, -math.log(0.01))
    assert torch.allclose(out.image, expected, atol=1e-9)
    heel = _sim(ct, preset("heel"))
    gain = heel_gain(DETECTOR, 0.3, torch.float64)
    assert torch.allclose(heel.image, heel.clean - torch.log(gain)[None, :], atol=1e-9)
    assert float(gain[-1]) == pytest.approx(1.3) and float(gain[0]) == pytest.approx(0.7)


def test_a_screw_core_exceeds_the_cts_largest_line_integral(ct):
    energy = effective_energy_kev()
    mu_ti = float(mass_attenuation("titanium", energy)) * nominal_density("titanium") / 10  # 1/mm
    tilt = 70.0
    screw = Instrument("screw", (Rod((0.0, 0.0), 20.0, tilt, 38.0, 3.0),))
    fine = Detector(**DEMO_DETECTOR)  # 3 mm pixels: 1.8 mm in the object plane, the screw's core fills one
    out = simulate_xray(ct[0], ct[1], fine, ct[2], Degradation(instruments=(screw,)), dtype=torch.float64)
    core = 2 * 3.0 / math.cos(math.radians(tilt))  # mm of titanium along the central ray
    r, c = divmod(int(out.instrument_path_mm.argmax()), fine.cols)
    assert float(out.line_integral[r, c]) > float(out.clean.max())
    assert float(out.line_integral[r, c] - out.clean[r, c]) == pytest.approx(mu_ti * core, rel=0.1)
    # off the instrument the X-ray is the CT's DRR; the model CT knows nothing of the screw
    assert torch.allclose(out.line_integral[~out.instrument_mask], out.clean[~out.instrument_mask], atol=1e-12)
    assert torch.equal(out.model.mu, Volume.from_hu(ct[0], ct[1], dtype=torch.float64).mu)
    assert mu_ti == pytest.approx(0.348, abs=0.002) and energy == pytest.approx(60.0, abs=0.5)


def test_random_instruments_cover_up_to_five_percent_reproducibly(ct):
    a = _sim(ct, preset("instruments", seed=1))
    b = _sim(ct, preset("instruments", seed=1))
    c = _sim(ct, preset("instruments", seed=2))
    assert 0.025 <= a.instrument_coverage <= 0.05
    assert torch.equal(a.image, b.image) and torch.equal(a.instrument_mask, b.instrument_mask)
    assert not torch.equal(a.instrument_mask, c.instrument_mask)
    assert bool((a.line_integral[a.instrument_mask] > a.clean[a.instrument_mask]).all())


def test_truncation_leaves_rows_the_cropped_ct_cannot_explain(ct):
    out = _sim(ct, preset("truncation"))
    full = Volume.from_hu(ct[0], ct[1], dtype=torch.float64)
    assert out.model.mu.shape == (29, 56, 64)  # round(0.6 x 48) S-I slices of 6 mm
    assert torch.equal(out.model.mu, full.mu[9:38])
    assert torch.allclose(out.model.index_to_world(torch.zeros(1, 3, dtype=torch.float64)),
                          full.index_to_world(torch.tensor([[0.0, 0.0, 9.0]], dtype=torch.float64)))
    model_drr = render(out.model, DETECTOR, ct[2])[0]
    unexplained = (model_drr == 0).all(1) & (out.image > 0.5).any(1)  # rows: no CT, but the body is in the X-ray
    assert int(unexplained.sum()) >= 6
    explained = (model_drr > 0).any(1)
    assert torch.allclose(model_drr[explained][:, 20:44].mean(), out.image[explained][:, 20:44].mean(), rtol=0.2)
    assert crop_axial(full, 1.0) is full


def test_processing_presets_store_their_convention(ct):
    clean = _sim(ct).image
    stored = {name: _sim(ct, preset(name)) for name in ("processing", "raw", "inverted")}
    assert stored["processing"].convention == "line_integral" and len(torch.unique(stored["processing"].image)) <= 256
    assert stored["raw"].convention == "intensity"
    assert torch.allclose(stored["raw"].image, torch.exp(-clean), atol=1e-12)
    assert stored["inverted"].convention == "inverted"
    assert torch.allclose(stored["inverted"].image, clean.min() + clean.max() - clean, atol=1e-12)
    raw_inverted = _sim(ct, Degradation(processing=Processing(log=False, invert=True)))
    assert raw_inverted.convention == "inverted_intensity"


def _materials(ct, kvp):
    return MaterialVolume.from_hu(ct[0], ct[1], Beam(tube_spectrum(kvp), output="intensity"), dtype=torch.float64)


def test_the_polychromatic_primary_is_the_renderers_polychromatic_model(ct):
    out = _sim(ct, preset("polychromatic"))
    expected = render(_materials(ct, 60), DETECTOR, ct[2])[0]
    assert torch.allclose(torch.exp(-out.line_integral), expected, rtol=1e-6, atol=1e-12)
    assert float((out.line_integral - out.clean).abs().max()) > 0.1  # 60 kVp is not the 60 keV model


def test_polychromatic_metal_is_summed_over_the_spectrum(ct, air):
    flat = (*air, ct[2])
    disc = Instrument("plate", (Disc((0.0, 0.0), 40.0, 2.0),))
    out = _sim(flat, Degradation(instruments=(disc,), kvp=80))
    beam = Beam(tube_spectrum(80))
    energies, weights = beam.weights()
    mu_ti = mass_attenuation("titanium", energies) * nominal_density("titanium") / 10
    air_only = render(_materials(flat, 80).with_beam(Beam(tube_spectrum(80), output="line_integral")),
                      DETECTOR, ct[2])[0]
    materials = _materials(flat, 80)
    paths = torch.stack([render(Volume(materials.densities[m], materials.affine), DETECTOR, ct[2])[0]
                         for m in range(len(materials.materials))]) / 10  # g/cm^2
    phi = beam.attenuation_matrix(materials.materials)
    r, c = 31, 31
    by_hand = float((torch.exp(-(paths[:, r, c] @ phi) - mu_ti * 2.0) * weights).sum())
    assert float(out.line_integral[r, c]) == pytest.approx(-math.log(by_hand), rel=1e-9)
    assert float(out.line_integral[0, 0]) == pytest.approx(float(air_only[0, 0]), abs=1e-9)


def test_every_preset_is_documented_and_all_moderate_combines_them(ct):
    assert tuple(PRESETS) == REALISM_PRESETS
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "realism.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in doc, name
    moderate = preset("all_moderate", seed=7)
    assert moderate.seed == 7 and moderate.realism.scatter_fraction == 0.3
    assert moderate.realism.photons_per_pixel == 1e4 and isinstance(moderate.instruments, Instruments)
    out = _sim(ct, moderate)
    assert out.convention == "line_integral" and out.instrument_coverage > 0 and out.collimation_mask is not None
    assert out.model.mu.shape[0] < 48


@pytest.mark.parametrize("make", [
    lambda ct: _sim(ct, Degradation(truncation=0.0)),
    lambda ct: _sim(ct, Degradation(truncation=1.5)),
    lambda ct: _sim(ct, Degradation(kvp=65)),
    lambda ct: _sim(ct, Degradation(seed=-1)),
    lambda ct: _sim(ct, Degradation(instruments="screws")),
    lambda ct: _sim(ct, Degradation(instruments=("screw",))),
    lambda ct: _sim(ct, Degradation(processing="log")),
    lambda ct: _sim(ct, "scatter"),
    lambda ct: preset("fog"),
    lambda ct: simulate_xray(ct[0], ct[1], DETECTOR, torch.eye(4, dtype=torch.float64), preset("instruments")),
    lambda ct: simulate_xray(ct[0], ct[1], "detector", ct[2]),
    lambda ct: _sim(ct, Degradation(Realism(blur_mm=1e5))),
    lambda ct: crop_axial(ct[0], 0.5),
])
def test_bad_simulation_parameters_are_input_errors(ct, make):
    with pytest.raises(InputError):
        make(ct)
