"""Generate the physics tables shipped in ``DiffRegLogic/physics/data`` (run once, by a maintainer).

    python -m venv /tmp/phys && /tmp/phys/bin/pip install xraydb==4.5.8 spekpy==2.5.4
    /tmp/phys/bin/python tools/make_physics_tables.py

* ``mass_attenuation.json``: total mass attenuation coefficients mu/rho
  (cm^2/g, coherent scattering included) of the materials DiffReg knows, from
  the elemental tables of ``xraydb`` (W. T. Elam, B. D. Ravel and J. R.
  Sieber, Radiat. Phys. Chem. 63 (2002) 121), mixed by mass fraction; the
  compositions and nominal densities are NIST's ("Composition of Materials"
  database; ICRU Report 44 for the tissues), as printed below.
* ``tube_spectra.json``: tungsten-anode tube spectra from ``spekpy``
  (G. Poludniowski et al., Med. Phys. 48 (2021) 3630) for 60-120 kVp, 12 deg
  anode angle, 2.5 mm Al filtration at 1 m, 1 keV bins, with spekpy's own mean
  energy and first half-value layer of each spectrum.

The engine never imports xraydb or spekpy: it reads these files.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import spekpy
import xraydb

OUT = Path(__file__).resolve().parents[1] / "DiffRegLogic" / "physics" / "data"

# Mass fractions and nominal densities (g/cm^3), NIST "Composition of Materials" (ICRU-44 tissues).
MATERIALS = {
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 1.20479e-3,
            "Air, Dry (near sea level)"),
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0, "Water, Liquid"),
    "soft_tissue": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                     "Cl": 0.002, "K": 0.003}, 1.06, "Tissue, Soft (ICRU-44)"),
    "bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103, "S": 0.003,
              "Ca": 0.225}, 1.92, "Bone, Cortical (ICRU-44)"),
    "titanium": ({"Ti": 1.0}, 4.54, "Titanium (implants)"),
    "aluminium": ({"Al": 1.0}, 2.699, "Aluminum (tube filtration)"),
}

ENERGIES_KEV = np.round(np.arange(1.0, 150.0 + 1e-9, 0.5), 3)
KVPS = (60, 70, 80, 90, 100, 110, 120)
ANODE_ANGLE_DEG = 12.0
FILTER_MM_AL = 2.5


def mass_attenuation() -> dict:
    table = {}
    for name, (fractions, density, nist_name) in MATERIALS.items():
        total = sum(fractions.values())
        mu = sum(w / total * xraydb.mu_elam(el, ENERGIES_KEV * 1e3) for el, w in fractions.items())
        table[name] = {"nist_name": nist_name, "mass_fractions": fractions, "density_g_cm3": density,
                       "mu_over_rho_cm2_g": [float(f"{v:.6g}") for v in mu]}
    return {
        "provenance": {
            "generator": "tools/make_physics_tables.py",
            "source": f"xraydb {xraydb.__version__}: mu_elam (Elam, Ravel, Sieber 2002), kind='total'",
            "compositions": "NIST Composition of Materials database (ICRU Report 44 for tissues)",
            "date": datetime.date.today().isoformat(),
        },
        "energies_keV": ENERGIES_KEV.tolist(),
        "materials": table,
    }


def tube_spectra() -> dict:
    spectra, means, hvls = {}, {}, {}
    energies = None
    for kvp in KVPS:
        s = spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=1.0)
        s.filter("Al", FILTER_MM_AL)
        k, phi = s.get_spectrum()
        grid = np.arange(1.5, max(KVPS), 1.0)
        fluence = np.zeros_like(grid)
        fluence[: len(k)] = phi
        assert np.allclose(grid[: len(k)], k)
        energies = grid
        spectra[str(kvp)] = [float(f"{v:.6g}") for v in fluence / fluence.sum()]
        means[str(kvp)] = round(float(s.get_emean()), 4)
        hvls[str(kvp)] = round(float(s.get_hvl1()), 4)
    return {
        "provenance": {
            "generator": "tools/make_physics_tables.py",
            "source": f"spekpy {spekpy.__version__} (Poludniowski et al. 2021), tungsten anode",
            "anode_angle_deg": ANODE_ANGLE_DEG,
            "filtration": f"{FILTER_MM_AL} mm Al",
            "distance_m": 1.0,
            "bins": "1 keV wide, centres below; fluence per bin normalised to sum 1",
            "date": datetime.date.today().isoformat(),
        },
        "energies_keV": energies.tolist(),
        "fluence": spectra,
        "mean_energy_keV": means,
        "hvl1_mm_al": hvls,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, table in (("mass_attenuation.json", mass_attenuation()), ("tube_spectra.json", tube_spectra())):
        (OUT / name).write_text(json.dumps(table, indent=1) + "\n")
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
