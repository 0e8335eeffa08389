"""HU calibration, material thresholds and the tube spectrum refuse numbers out of range, by name."""

from __future__ import annotations

import math

import pytest

from DiffRegLogic.errors import InputError
from DiffRegLogic.physics.calibration import MaterialThresholds
from DiffRegLogic.physics.spectra import tube_spectrum
from DiffRegLogic.volume.hu import HUToMu


@pytest.mark.parametrize("kwargs, message", [
    ({"mu_water": 2**70}, "mu_water must be > 0 1/mm and <= 10 1/mm"),
    ({"mu_water": 1e308}, "mu_water must be > 0 1/mm and <= 10 1/mm"),
    ({"mu_bone": 2**70}, "mu_bone must be > 0 1/mm and <= 10 1/mm"),
    ({"bone_hu": 1e308}, "bone_hu must be > 0 HU and <= 100000 HU"),
    ({"bone_hu": math.inf}, "bone_hu must be a finite number"),
])
def test_hu_conversion_out_of_range(kwargs, message):
    with pytest.raises(InputError, match=message):
        HUToMu(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"bone_min_hu": math.inf}, "bone_min_hu must be a finite number"),
    ({"bone_min_hu": 1e308}, "bone_min_hu must be >= -100000 HU and <= 100000 HU"),
    ({"air_max_hu": -1e308}, "air_max_hu must be >= -100000 HU"),
    ({"soft_width_hu": -1.0}, "soft_width_hu must be >= 0 HU"),
    ({"soft_width_hu": 2**70}, "soft_width_hu must be >= 0 HU and <= 100000 HU"),
])
def test_material_thresholds_out_of_range(kwargs, message):
    with pytest.raises(InputError, match=message):
        MaterialThresholds(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_bins": 0}, r"n_bins \(energy bins\) must be >= 1"),
    ({"n_bins": 2.5}, "must be a whole number"),
    ({"kvp": math.nan}, "kvp must be a finite number"),
    ({"extra_filtration_mm_al": -1.0}, "extra_filtration_mm_al must be >= 0 mm"),
])
def test_spectrum_arguments_out_of_range(kwargs, message):
    with pytest.raises(InputError, match=message):
        tube_spectrum(**kwargs)


def test_valid_settings_still_work():
    assert HUToMu(mu_water=0.5, bone_hu=3000.0, mu_bone=1.2).mu_bone == 1.2
    assert MaterialThresholds(soft_width_hu=50.0).soft_width_hu == 50.0
    assert len(tube_spectrum(80, n_bins=8).energies_kev) == 8
