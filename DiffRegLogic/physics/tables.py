"""Mass attenuation of materials (cm^2/g) from the shipped table ``physics/data/mass_attenuation.json``.

``mass_attenuation.json``: total mass attenuation coefficients mu/rho
(cm^2/g) from 1 to 150 keV in 0.5 keV steps, from xraydb's elemental tables
(Elam, Ravel and Sieber 2002) mixed by NIST/ICRU-44 mass fractions, for
``air``, ``water``, ``soft_tissue``, ``bone`` (cortical), ``titanium`` and
``aluminium``. ``tools/make_physics_tables.py`` made it once; the engine
never imports xraydb.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import InputError

DATA = Path(__file__).resolve().parent / "data"


@lru_cache(maxsize=None)
def _table(name: str) -> dict:
    path = DATA / name
    if not path.is_file():
        raise FileNotFoundError(f"physics table {path} is missing; reinstall DiffReg (it ships with the package)")
    return json.loads(path.read_text())


def material_names() -> tuple[str, ...]:
    """Materials with a mass attenuation table."""
    return tuple(_table("mass_attenuation.json")["materials"])


def nominal_density(material: str) -> float:
    """NIST nominal density of ``material`` (g/cm^3)."""
    return float(_material(material)["density_g_cm3"])


def _material(material: str) -> dict:
    table = _table("mass_attenuation.json")["materials"]
    if material not in table:
        raise InputError(f"unknown material {material!r}; known: {', '.join(table)}")
    return table[material]


def mass_attenuation(material: str, energies_kev) -> torch.Tensor:
    """mu/rho (cm^2/g, float64) of ``material`` at ``energies_kev`` (any shape), log-log interpolated.

    Energies must lie in the table's range (1-150 keV).
    """
    grid = torch.tensor(_table("mass_attenuation.json")["energies_keV"], dtype=torch.float64)
    values = torch.tensor(_material(material)["mu_over_rho_cm2_g"], dtype=torch.float64)
    e = torch.as_tensor(energies_kev, dtype=torch.float64)
    if not torch.isfinite(e).all() or (e < grid[0]).any() or (e > grid[-1]).any():
        raise InputError(f"energies must lie within {float(grid[0])}-{float(grid[-1])} keV")
    idx = torch.searchsorted(grid, e.reshape(-1)).clamp(1, len(grid) - 1)
    x0, x1 = grid[idx - 1].log(), grid[idx].log()
    y0, y1 = values[idx - 1].log(), values[idx].log()
    w = (e.reshape(-1).log() - x0) / (x1 - x0)
    return (y0 + w * (y1 - y0)).exp().reshape(e.shape)
