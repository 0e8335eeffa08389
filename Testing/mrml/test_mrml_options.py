"""The panel's physics, search and robustness settings reach the engine (real MRML, the slicer-core wheel).

Independent truths: the engine's own polychromatic model built directly
from the CT (what ``diffreg register --renderer polychromatic`` renders),
the monochromatic DRR it must differ from, and `make_options` with the same
values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import slicer
import torch

from DiffRegLogic import mrml
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.physics.beam import Beam
from DiffRegLogic.physics.materials import MaterialVolume
from DiffRegLogic.physics.spectra import tube_spectrum
from DiffRegLogic.registration.options import make_options

from test_mrml import base_setup, scene, simulated_case  # noqa: F401  (scene is a fixture)


def test_search_and_robust_settings_become_registration_options(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, search="wide", searchRotation=30.0, searchTranslation=40.0, robust="tukey",
                       footprintMask=True, nuisance="scatter")
    options = mrml.registration_options(setup)
    expected = make_options(levels=(4.0, 2.0, 1.0), search="wide", search_rotation_deg=30.0,
                            search_translation_mm=40.0, robust="tukey", footprint_mask=True, nuisance="scatter")
    assert dataclasses.asdict(options) == dataclasses.asdict(expected)


@pytest.mark.parametrize("field, value, label", [
    ("searchRotation", 200.0, "Search rotation range"),
    ("searchTranslation", -1.0, "Search translation range"),
    ("tubeVoltage", 50.0, "Tube voltage"),
    ("filtrationMmAl", 25.0, "Added filtration"),
    ("tubeVoltage", 85.0, "60, 70, ..., 120 kVp"),
])
def test_out_of_range_panel_numbers_name_their_field(scene, field, value, label):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, search="wide", polychromatic=True, **{field: value})
    with pytest.raises(InputError, match=label):
        mrml.render_preview(scene, setup)
    assert setup.outputDrr is None and setup.outputTransform is None  # nothing was created


def test_polychromatic_preview_is_the_engine_polychromatic_drr(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, primaryAngle=20.0, secondaryAngle=-10.0, polychromatic=True, tubeVoltage=100.0,
                       filtrationMmAl=1.0)
    outputs = mrml.render_preview(scene, setup)
    shown = slicer.util.arrayFromVolume(outputs.drr)[0]
    model = MaterialVolume.from_volume(volume, Beam(tube_spectrum(100.0, 1.0)))
    with torch.no_grad():
        expected = render(model, detector, truth)[0].numpy()
        mono = render(volume, detector, truth)[0].numpy()
    np.testing.assert_allclose(shown, expected, rtol=1e-5, atol=1e-5)
    # beam hardening: the polychromatic line integral is not the monochromatic one
    assert np.abs(shown - mono).max() > 0.05 * mono.max()
    # another tube voltage gives another image
    setup.tubeVoltage = 60.0
    mrml.render_preview(scene, setup)
    assert np.abs(slicer.util.arrayFromVolume(outputs.drr)[0] - shown).max() > 1e-3
