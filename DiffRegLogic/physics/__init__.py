"""X-ray physics: attenuation tables, tube spectra, the detector's response, materials of a CT, realism.

Modules: `tables` (mass attenuation from the shipped data), `spectra`
(tungsten tube spectra, filtration), `beam` (spectrum + detector response +
output: the energy sum), `calibration` (HU -> material weights and density,
torch-free), `materials` (`MaterialVolume`: a CT as material densities),
`realism` (heel effect, scatter, quantum noise, detector blur). The data
tables live in ``physics/data`` with their provenance
(``tools/make_physics_tables.py``).
"""

from .._lazy import lazy_exports

RESPONSES = ("energy_integrating", "photon_counting")
"""Detector responses of a `Beam`: energy-integrating (flat panels) or photon-counting."""
OUTPUTS = ("line_integral", "intensity")
"""What a `Beam` outputs: -log(I/I0) (comparable to a monochromatic DRR) or I/I0."""

__getattr__, __dir__ = lazy_exports(__name__, {
    ".tables": "DATA material_names nominal_density mass_attenuation",
    ".spectra": "Spectrum tube_kvps tube_spectrum monochromatic",
    ".beam": "Beam",
    ".calibration": "BASE_MATERIALS DensityCalibration MaterialThresholds",
    ".materials": "material_densities MaterialVolume",
    ".realism": "Realism gaussian_filter heel_gain apply_realism intensity_to_line_integral",
})
__all__ = sorted(__getattr__.table) + ["OUTPUTS", "RESPONSES"]
