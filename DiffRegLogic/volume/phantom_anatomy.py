"""Anatomy of the chest phantom as parameters, and seeded sampling of "patients".

`PhantomAnatomy` holds what varies between patients; its defaults are the
embedded phantom exactly (``chest_phantom_hu(anatomy=PhantomAnatomy())`` is
bit-identical to ``chest_phantom_hu()``). `sample_anatomy` draws one
plausible patient per seed, so that a network can be trained on many CTs and
tested on one it never saw. Torch-free apart from `spine_offset_mm`.

Geometry (RAS, mm; see `DiffRegLogic.volume.phantoms`): the torso is centred
on x = 0, its back is flat at y = -100 mm and it spans z = -135 .. 135 mm.

- Body scales stretch the whole torso (outline, lungs, heart, liver, ribs,
  sternum, clavicles, spine, scapula, bead position) about the RAS origin:
  x by ``body_width_scale``, y by ``body_depth_scale``; z is not scaled.
- Organ offsets then move one organ, in world mm, on top of that.
- The spine's centre line bends: at height z it is moved by
  ``bend * u**2`` with ``u = clamp((z + 135) / 270, 0, 1)``, i.e. not at all
  at the bottom of the torso (z = -135 mm, vertical there) and by the full
  bend at the top (z = +135 mm), a parabola in between. See `spine_offset_mm`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..limits import SEED_RANGE, check_number

SPINE_Z_RANGE_MM = (-135.0, 135.0)
"""Heights (z, mm) where the spine's bend is 0 (bottom) and full (top)."""

SAMPLED_RANGES: dict[str, tuple[float, float]] = {
    "body_width_scale": (0.85, 1.15),
    "body_depth_scale": (0.85, 1.15),
    "heart_offset_mm": (-10.0, 10.0),
    "right_lung_offset_mm": (-10.0, 10.0),
    "left_lung_offset_mm": (-10.0, 10.0),
    "liver_offset_mm": (-10.0, 10.0),
    "bone_density_scale": (0.8, 1.2),
    "spine_lateral_bend_mm": (-12.0, 12.0),
    "spine_sagittal_bend_mm": (-12.0, 12.0),
    "rib_spacing_mm": (21.0, 27.0),
    "soft_tissue_hu_offset": (-20.0, 20.0),
}
"""Uniform range `sample_anatomy` draws each field from (each component, for the offsets)."""

ACCEPTED_RANGES: dict[str, tuple[float, float]] = {
    "body_width_scale": (0.5, 1.5),
    "body_depth_scale": (0.5, 1.5),
    "heart_offset_mm": (-50.0, 50.0),
    "right_lung_offset_mm": (-50.0, 50.0),
    "left_lung_offset_mm": (-50.0, 50.0),
    "liver_offset_mm": (-50.0, 50.0),
    "bone_density_scale": (0.0, 3.0),
    "spine_lateral_bend_mm": (-50.0, 50.0),
    "spine_sagittal_bend_mm": (-50.0, 50.0),
    "rib_spacing_mm": (15.0, 30.0),
    "soft_tissue_hu_offset": (-200.0, 200.0),
}
"""What `PhantomAnatomy` accepts (wider than sampled: a hand-made extreme patient is allowed)."""

_OFFSETS = ("heart_offset_mm", "right_lung_offset_mm", "left_lung_offset_mm", "liver_offset_mm")


def _unit(name: str) -> str:
    return "HU" if name.endswith("hu_offset") else ("mm" if name.endswith("_mm") else "")


@dataclass(frozen=True)
class PhantomAnatomy:
    """The varied parameters of the chest phantom; the defaults are the embedded phantom.

    Every field, its unit and the range `sample_anatomy` draws it from
    (`SAMPLED_RANGES`; `ACCEPTED_RANGES` is what the constructor accepts):

    - body_width_scale: R-L (x) size of the torso and everything in it, relative; 0.85 .. 1.15.
      The default grid is 333 mm wide: above about 1.03 the lower torso (half-width up to
      161 mm) is cut by the field of view, as in a real CT; pass a wider grid to avoid it.
    - body_depth_scale: A-P (y) size of the torso and everything in it, relative; 0.85 .. 1.15.
    - heart_offset_mm: (x, y, z) move of the heart, mm; each -10 .. 10.
    - right_lung_offset_mm, left_lung_offset_mm: (x, y, z) move of each lung, mm; each -10 .. 10.
    - liver_offset_mm: (x, y, z) move of the liver, mm; each -10 .. 10.
    - bone_density_scale: multiplies the HU of every bone (ribs, sternum, clavicles,
      vertebrae, spinous processes, scapula; not the metal-like fiducial bead); 0.8 .. 1.2.
    - spine_lateral_bend_mm: lateral (+x, towards the patient's right) move of the spine's
      centre line at the top of the torso relative to the bottom, mm; -12 .. 12.
    - spine_sagittal_bend_mm: anterior (+y) move of the spine's centre line at the top of the
      torso relative to the bottom, mm; -12 .. 12. Bone behind the skin is cut off.
    - rib_spacing_mm: cranio-caudal distance between neighbouring ribs (9 ribs about the
      fifth, which stays at z = 12 mm), mm; 21 .. 27 (default 24).
    - soft_tissue_hu_offset: added to the HU of soft tissue, heart and liver (not lungs,
      air or bone), HU; -20 .. 20.

    Raises `InputError` for a field that is not a finite number in its accepted range (or,
    for an offset, not three of them).
    """

    body_width_scale: float = 1.0
    body_depth_scale: float = 1.0
    heart_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    right_lung_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    left_lung_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    liver_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bone_density_scale: float = 1.0
    spine_lateral_bend_mm: float = 0.0
    spine_sagittal_bend_mm: float = 0.0
    rib_spacing_mm: float = 24.0
    soft_tissue_hu_offset: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            name, value = f.name, getattr(self, f.name)
            low, high = ACCEPTED_RANGES[name]
            if name in _OFFSETS:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
                    raise InputError(f"PhantomAnatomy.{name} must be three numbers (x, y, z) in mm, "
                                     f"got {value!r}")
                checked = tuple(float(check_number(f"PhantomAnatomy.{name}[{i}]", v, low, high, unit="mm"))
                                for i, v in enumerate(value))
            else:
                checked = float(check_number(f"PhantomAnatomy.{name}", value, low, high, unit=_unit(name)))
            object.__setattr__(self, name, checked)


def _check_seed(seed) -> int:
    return check_number("seed", seed, *SEED_RANGE, integer=True)


def sample_anatomy(seed: int) -> PhantomAnatomy:
    """One plausible patient: every field uniform in its `SAMPLED_RANGES` range, drawn from numpy's
    ``default_rng(seed)`` in field order (offsets: x, y, z). Same seed, same patient.

    ``seed`` is a whole number in `DiffRegLogic.limits.SEED_RANGE` (else `InputError`).
    """
    rng = np.random.default_rng(_check_seed(seed))
    values = {}
    for f in dataclasses.fields(PhantomAnatomy):
        low, high = SAMPLED_RANGES[f.name]
        if f.name in _OFFSETS:
            values[f.name] = tuple(float(v) for v in rng.uniform(low, high, size=3))
        else:
            values[f.name] = float(rng.uniform(low, high))
    return PhantomAnatomy(**values)


def spine_offset_mm(anatomy: PhantomAnatomy, z):
    """(dx, dy) in mm of the spine's centre line at heights ``z`` (mm, a torch tensor of any shape).

    ``dx = spine_lateral_bend_mm * u**2`` and ``dy = spine_sagittal_bend_mm * u**2`` with
    ``u = clamp((z + 135) / 270, 0, 1)``: zero (and vertical) at the bottom of the torso,
    the full bend at its top.
    """
    z0, z1 = SPINE_Z_RANGE_MM
    u2 = ((z - z0) / (z1 - z0)).clamp(0.0, 1.0) ** 2
    return anatomy.spine_lateral_bend_mm * u2, anatomy.spine_sagittal_bend_mm * u2
