"""The realistic X-ray bench: an X-ray of a CT with documented degradations, and the CT the registration gets.

`simulate_xray(hu, affine, detector, pose, degradation)` renders, in the
order the physics happens (`Degradation`, every part optional):

1. the **primary intensity** I/I0 (H, W) of the full CT: monochromatic
   exp(-DRR) of the `Volume` from ``hu_to_mu``, or, with ``kvp``,
   polychromatic (`MaterialVolume` of the HU: air, soft tissue, bone; tube
   spectrum ``kvp`` with 2.5 mm Al plus ``filtration_mm_al``; energy
   integrating) from the per-material mass paths;
2. **instruments** (`physics.instrument_placement`), in the X-ray only: their metal
   paths attenuate the primary, per energy bin when polychromatic, else at
   the model's effective energy (`effective_energy_kev`: where water's mu
   equals ``hu_to_mu.mu_water``; 60 keV for the default 0.0206/mm);
3. **collimation** (`physics.processing.Collimation`): outside the field
   the primary is multiplied by the blades' transmission;
4. heel effect, **scatter**, quantum **noise** and detector **blur**
   (`physics.realism.apply_realism`, `Realism`);
5. the stored image's **processing** (`physics.processing.process`): log or
   not, window, gamma, unsharp masking, inversion, quantisation; without
   it, -log(I/I0).

**Truncation**: the X-ray is rendered from the full CT, but
`SimulatedXRay.model` (the CT the registration gets) keeps only the
central ``truncation`` of its S-I length (`crop_axial`).

Seeds: ``Degradation.seed`` seeds the instrument placement (a
`torch.Generator`) and the quantum noise (`Realism.seed` is replaced by
it), so the same seed gives the same image. `PRESETS` holds the named
degradations of `docs/realism.md`; `preset(name, seed)` returns one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.rigid import check_pose
from ..limits import SEED_RANGE, check_number
from ..volume.ct import Volume
from ..volume.hu import HUToMu
from .instrument_placement import Instruments, draw_instruments
from .instruments import Instrument, rasterize
from .processing import INTENSITY_FLOOR, Collimation, Processing, collimation_mask, process
from .realism import Realism, apply_realism, intensity_to_line_integral
from .tables import mass_attenuation, nominal_density

MM_TO_CM = 0.1
EFFECTIVE_ENERGY_RANGE_KEV = (10.0, 150.0)
"""Energies `effective_energy_kev` searches (water's mu/rho falls monotonically there)."""
EXPLICIT_SUPERSAMPLE = 3
"""Samples per pixel side of explicitly given instruments."""
ROW_CHUNK = 64
"""Detector rows per chunk of the polychromatic energy sum (bounds its (rows, W, E) memory)."""


@dataclass(frozen=True)
class Degradation:
    """What `simulate_xray` does to the X-ray (see the module docstring); the defaults change nothing.

    Args:
        realism: heel, scatter, noise, blur (its ``seed`` is replaced by ``seed``).
        instruments: random instruments (`Instruments`), explicit ones (a tuple of `Instrument`, sampled
            `EXPLICIT_SUPERSAMPLE` x `EXPLICIT_SUPERSAMPLE` per pixel), or None.
        truncation: fraction (0, 1] of the CT's S-I length the model keeps (1: all).
        processing: the stored image's processing, or None for -log(I/I0).
        collimation: the collimated field, or None.
        kvp: tube voltage of a polychromatic X-ray (a shipped spectrum: 60, 70, ..., 120), or None.
        filtration_mm_al: aluminium added to the spectrum's 2.5 mm (mm), with ``kvp``.
        seed: seed of the instruments and the noise, in `SEED_RANGE`.
    """

    realism: Realism = Realism()
    instruments: Instruments | tuple[Instrument, ...] | None = None
    truncation: float = 1.0
    processing: Processing | None = None
    collimation: Collimation | None = None
    kvp: float | None = None
    filtration_mm_al: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.instruments, (tuple, list)):
            if not all(isinstance(i, Instrument) for i in self.instruments):
                raise InputError("explicit instruments must be a tuple of Instrument objects")
            object.__setattr__(self, "instruments", tuple(self.instruments))
        for name, kind in (("realism", Realism), ("instruments", (Instruments, tuple)), ("processing", Processing),
                           ("collimation", Collimation)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                kind = kind[0] if isinstance(kind, tuple) else kind
                raise InputError(f"degradation {name} must be a {kind.__name__}"
                                 f"{'' if name == 'realism' else ' or None'}, got {type(value).__name__}")
        if self.realism is None:
            raise InputError("degradation realism must be a Realism (Realism() for none)")
        object.__setattr__(self, "truncation", check_number("truncation", self.truncation, 0.0, 1.0, low_open=True))
        if self.kvp is not None:
            from .spectra import tube_spectrum

            tube_spectrum(self.kvp, self.filtration_mm_al)  # InputError for a voltage without a shipped spectrum
        object.__setattr__(self, "filtration_mm_al", check_number("filtration_mm_al", self.filtration_mm_al,
                                                                  0.0, 100.0, unit="mm"))
        object.__setattr__(self, "seed", check_number("seed", self.seed, *SEED_RANGE, integer=True))

    @property
    def convention(self) -> str:
        """Intensity convention of the stored image (`physics.processing.CONVENTIONS`)."""
        return "line_integral" if self.processing is None else self.processing.convention


_MODERATE_PROCESSING = Processing(window=(0.5, 99.5), gamma=0.8, unsharp_amount=0.5, unsharp_sigma_mm=5.0, bits=8)
PRESETS: dict[str, Degradation] = {
    "clean": Degradation(),
    "scatter": Degradation(Realism(scatter_fraction=0.5, scatter_sigma_mm=40.0)),
    "noise": Degradation(Realism(photons_per_pixel=1e3)),
    "blur": Degradation(Realism(blur_mm=2.0)),
    "heel": Degradation(Realism(heel=0.3)),
    "instruments": Degradation(instruments=Instruments(coverage=0.05)),
    "truncation": Degradation(truncation=0.6),
    "processing": Degradation(processing=Processing(window=(1.0, 99.0), gamma=0.6, unsharp_amount=1.5,
                                                    unsharp_sigma_mm=8.0, bits=8)),
    "raw": Degradation(processing=Processing(log=False)),
    "inverted": Degradation(processing=Processing(invert=True)),
    "collimation": Degradation(collimation=Collimation("rectangle", (0.7, 0.8), 0.01)),
    "polychromatic": Degradation(kvp=60),
    "all_moderate": Degradation(Realism(photons_per_pixel=1e4, blur_mm=0.5, scatter_fraction=0.3,
                                        scatter_sigma_mm=40.0, heel=0.1),
                                instruments=Instruments(coverage=0.03), truncation=0.8,
                                processing=_MODERATE_PROCESSING,
                                collimation=Collimation("rectangle", (0.85, 0.9), 0.01), kvp=80),
}
"""Named degradations: each alone at its strongest documented level, and all together at moderate levels
(numbers and reasons in ``docs/realism.md``)."""


def preset(name: str, seed: int = 0) -> Degradation:
    """The `PRESETS` entry ``name`` with ``seed``."""
    if name not in PRESETS:
        raise InputError(f"unknown realism preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], seed=seed)


@dataclass
class SimulatedXRay:
    """A simulated X-ray and what it was made of.

    Attributes:
        image: (H, W) the stored image, in ``convention``.
        convention: ``"line_integral"``, ``"inverted"``, ``"intensity"`` or ``"inverted_intensity"``.
        line_integral: (H, W) -log(I/I0) of the detected intensity (after realism, before processing).
        clean: (H, W) the monochromatic DRR of the full CT at the pose (no degradation).
        model: the CT the registration gets (`crop_axial` of the full CT under truncation).
        instrument_mask: (H, W) bool, pixels an instrument touches (None without instruments).
        instrument_path_mm: (H, W) mean metal path per pixel, mm (None without instruments).
        instruments: the instruments drawn.
        collimation_mask: (H, W) bool, the open field (None without collimation).
        effective_energy_kev: the monochromatic model's energy (instruments' attenuation when monochromatic).
        degradation: what was applied.
    """

    image: torch.Tensor
    convention: str
    line_integral: torch.Tensor
    clean: torch.Tensor
    model: Volume
    instrument_mask: torch.Tensor | None
    instrument_path_mm: torch.Tensor | None
    instruments: tuple[Instrument, ...]
    collimation_mask: torch.Tensor | None
    effective_energy_kev: float
    degradation: Degradation

    @property
    def instrument_coverage(self) -> float:
        """Fraction of the pixels an instrument touches (0 without instruments)."""
        return 0.0 if self.instrument_mask is None else float(self.instrument_mask.float().mean())


def effective_energy_kev(hu_to_mu: HUToMu | None = None) -> float:
    """The energy (keV) at which water's mu (1/mm, shipped table) equals ``hu_to_mu.mu_water`` (bisection)."""
    mu_water = (hu_to_mu or HUToMu()).mu_water

    def mu(e: float) -> float:
        return float(mass_attenuation("water", e)) * nominal_density("water") * MM_TO_CM

    lo, hi = EFFECTIVE_ENERGY_RANGE_KEV
    if not mu(hi) <= mu_water <= mu(lo):
        raise InputError(f"mu_water = {mu_water:g}/mm is water's attenuation at no energy in {lo:g}-{hi:g} keV "
                         f"({mu(hi):.4g}-{mu(lo):.4g}/mm); the instruments' attenuation needs one")
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if mu(mid) > mu_water else (lo, mid)
    return (lo * hi) ** 0.5


def superior_axis(volume: Volume) -> int:
    """Index (0 = i, 1 = j, 2 = k) of the voxel axis most aligned with RAS S (z)."""
    directions = volume.affine[:3, :3].to(torch.float64).cpu()
    directions = directions / directions.norm(dim=0)
    return int(directions[2].abs().argmax())


def crop_axial(volume: Volume, fraction: float) -> Volume:
    """The central ``fraction`` (0, 1] of ``volume``'s S-I extent (voxels along `superior_axis`), same world place.

    Keeps n' = max(2, round(fraction n)) slices starting at (n - n') // 2; the
    affine's origin moves to the first kept slice, so every kept voxel stays
    where it was in RAS. Labels are cropped alike.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    fraction = check_number("truncation", fraction, 0.0, 1.0, low_open=True)
    axis = superior_axis(volume)
    n = volume.shape_ijk[axis]
    keep = max(2, int(round(fraction * n)))
    if keep >= n:
        return volume
    start = (n - keep) // 2
    dim = 2 - axis  # mu is (K, J, I)
    shift = torch.eye(4, dtype=torch.float64, device=volume.affine.device)
    shift[axis, 3] = float(start)
    labels = None if volume.labels is None else volume.labels.narrow(dim, start, keep).contiguous()
    return Volume(volume.mu.narrow(dim, start, keep).contiguous(), volume.affine @ shift, labels)


def magnification(volume: Volume, detector: Detector, pose: torch.Tensor) -> float:
    """SDD / depth (camera z, mm) of the CT centre: the object plane's magnification onto the detector."""
    center = torch.cat([volume.center.to(torch.float64).cpu(), torch.ones(1, dtype=torch.float64)])
    depth = float((pose.to(torch.float64).cpu() @ center)[2])
    if depth <= 0:
        raise InputError(f"the CT centre is {depth:g} mm along the principal ray, behind the source; give a pose "
                         "with the CT between source and detector")
    return float(detector.sdd) / depth


def _polychromatic_intensity(hu, affine, detector, pose, kvp, filtration_mm_al, instruments, renderer, options,
                             dtype) -> torch.Tensor:
    """(H, W) I/I0 = sum_E w(E) exp(-sum_m mu_m(E) L_m) T(E), T the instruments' transmission per energy bin."""
    from ..drr.rendering import render
    from .beam import Beam
    from .materials import MaterialVolume
    from .spectra import tube_spectrum

    beam = Beam(tube_spectrum(kvp, filtration_mm_al))
    materials = MaterialVolume.from_hu(hu, affine, beam, dtype=dtype)
    with torch.no_grad():
        paths = torch.stack([render(Volume(materials.densities[m], materials.affine), detector, pose, renderer,
                                    **options)[0] for m in range(len(materials.materials))])  # (M, H, W) g/cm^2 * 10
    paths = paths.to(torch.float64).cpu() * MM_TO_CM
    energies, weights = beam.weights(torch.float64)
    phi = beam.attenuation_matrix(materials.materials, torch.float64)  # (M, E) cm^2/g
    h, w = detector.shape
    out = torch.empty(h, w, dtype=torch.float64)
    for r in range(0, h, ROW_CHUNK):
        exponent = -torch.einsum("mhw,me->hwe", paths[:, r:r + ROW_CHUNK], phi)
        out[r:r + ROW_CHUNK] = torch.exp(exponent) @ weights
    if instruments is not None and instruments.mask.any():
        mu = {m: mass_attenuation(m, energies) * nominal_density(m) * MM_TO_CM for m in instruments.paths}
        index = instruments.mask.reshape(-1).nonzero()[:, 0]
        exponent = -paths.reshape(len(phi), -1)[:, index].T @ phi  # (N, E)
        out.view(-1)[index] = (torch.exp(exponent) * instruments.transmission_spectrum(mu)) @ weights
    return out


def simulate_xray(hu, affine, detector: Detector, pose, degradation: Degradation | None = None, *,
                  hu_to_mu: HUToMu | None = None, renderer: str = "siddon", dtype: torch.dtype = torch.float32,
                  **render_options) -> SimulatedXRay:
    """A degraded X-ray of the CT (``hu`` (K, J, I) Hounsfield units, ``affine`` (4, 4) ijk -> RAS mm) at ``pose``.

    ``pose``: camera_from_world (4, 4); ``degradation``: see `Degradation`
    (None: a clean DRR); ``hu_to_mu``: the monochromatic model's HU -> mu;
    ``renderer`` and ``render_options``: as `DiffRegLogic.drr.render` takes
    them. Everything is computed without gradients on the CPU in float64
    after the render; the returned images have ``dtype``. See the module
    docstring for the order of the steps and `SimulatedXRay` for the result.
    """
    from ..drr.rendering import render

    degradation = Degradation() if degradation is None else degradation
    if not isinstance(degradation, Degradation):
        raise InputError(f"degradation must be a Degradation or None, got {type(degradation).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    pose = check_pose(pose, name="true pose").to(torch.float64).cpu()
    if pose.shape[0] != 1:
        raise InputError(f"simulate_xray takes one pose (4, 4), got {tuple(pose.shape)}")
    pose = pose[0]
    realism = replace(degradation.realism, seed=degradation.seed)
    realism.check_detector(detector)
    full = Volume.from_hu(hu, affine, hu_to_mu, dtype=dtype)
    with torch.no_grad():
        clean = render(full, detector, pose, renderer, **render_options)[0].to(torch.float64).cpu()
    energy = effective_energy_kev(hu_to_mu)

    instruments, paths = (), None
    if isinstance(degradation.instruments, Instruments):
        generator = torch.Generator().manual_seed(degradation.seed)
        instruments, paths = draw_instruments(degradation.instruments, detector,
                                              magnification(full, detector, pose), generator)
    elif degradation.instruments is not None:
        instruments = degradation.instruments
        paths = rasterize(instruments, detector, magnification(full, detector, pose), EXPLICIT_SUPERSAMPLE)
    if degradation.kvp is not None:
        primary = _polychromatic_intensity(hu, affine, detector, pose, degradation.kvp, degradation.filtration_mm_al,
                                           paths, renderer, render_options, dtype)
    else:
        primary = torch.exp(-clean)
        if paths is not None:
            mu = {m: float(mass_attenuation(m, energy)) * nominal_density(m) * MM_TO_CM for m in paths.paths}
            primary = primary * paths.transmission(mu)
    field = None
    if degradation.collimation is not None:
        field = collimation_mask(detector, degradation.collimation)
        primary = torch.where(field, primary, primary * degradation.collimation.transmission)

    detected = apply_realism(primary[None], detector, realism)
    line_integral = intensity_to_line_integral(detected, realism)[0]
    floor = 0.5 / realism.photons_per_pixel if realism.photons_per_pixel else INTENSITY_FLOOR
    image = process(detected, detector, degradation.processing, floor=floor)[0]
    model = crop_axial(full, degradation.truncation) if degradation.truncation < 1 else full
    return SimulatedXRay(
        image=image.to(dtype), convention=degradation.convention, line_integral=line_integral.to(dtype),
        clean=clean.to(dtype), model=model, instrument_mask=None if paths is None else paths.mask,
        instrument_path_mm=None if paths is None else paths.mean_path_mm().to(dtype), instruments=instruments,
        collimation_mask=field, effective_energy_kev=energy, degradation=degradation)

