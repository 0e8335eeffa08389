"""X-ray physics: attenuation tables, tube spectra, the detector's response, materials of a CT, realism.

Modules: `tables` (mass attenuation from the shipped data), `spectra`
(tungsten tube spectra, filtration), `beam` (spectrum + detector response +
output: the energy sum), `calibration` (HU -> material weights and density,
torch-free), `materials` (`MaterialVolume`: a CT as material densities),
`realism` (heel effect, scatter, quantum noise, detector blur),
`instruments` (metal parts as path lengths on the detector),
`instrument_placement` (random wires, screws, K-wires, ECG electrodes),
`processing` (log, window, gamma, unsharp masking, quantisation, inversion;
collimation), `xray_simulation` (the realistic X-ray bench: a CT's X-ray
with named degradations, `PRESETS`). The data
tables live in ``physics/data`` with their provenance
(``tools/make_physics_tables.py``).
"""

from .._lazy import lazy_exports

RESPONSES = ("energy_integrating", "photon_counting")
"""Detector responses of a `Beam`: energy-integrating (flat panels) or photon-counting."""
OUTPUTS = ("line_integral", "intensity")
"""What a `Beam` outputs: -log(I/I0) (comparable to a monochromatic DRR) or I/I0."""
REALISM_PRESETS = ("clean", "scatter", "noise", "blur", "heel", "instruments", "truncation", "processing", "raw",
                   "inverted", "collimation", "polychromatic", "all_moderate")
"""Names of `xray_simulation.PRESETS` (torch-free, for the command line's checks), in their order."""

__getattr__, __dir__ = lazy_exports(__name__, {
    ".tables": "DATA material_names nominal_density mass_attenuation",
    ".spectra": "Spectrum tube_kvps tube_spectrum monochromatic",
    ".beam": "Beam",
    ".calibration": "BASE_MATERIALS DensityCalibration MaterialThresholds",
    ".materials": "material_densities MaterialVolume",
    ".realism": "Realism gaussian_filter heel_gain apply_realism intensity_to_line_integral",
    ".instruments": "Rod Wire Disc Instrument InstrumentPaths rasterize",
    ".instrument_placement": "INSTRUMENT_KINDS Instruments make_instrument draw_instruments",
    ".processing": "CONVENTIONS Processing Collimation process convention_of window_level percentile_window "
                   "apply_gamma unsharp_mask invert quantize collimation_mask collimation_area_mm2",
    ".xray_simulation": "Degradation PRESETS preset SimulatedXRay simulate_xray crop_axial effective_energy_kev "
                        "magnification superior_axis",
})
__all__ = sorted(__getattr__.table) + ["OUTPUTS", "REALISM_PRESETS", "RESPONSES"]
