"""Argument groups shared by the commands; torch-free, so that ``diffreg --help`` starts fast.

Every choice and default shown comes from the engine's own tables
(renderers, optimisers, similarities, parameterisations, HU conversion,
material thresholds, beam outputs), read from modules that do not import
torch.
"""

from __future__ import annotations

import argparse

from ..errors import InputError

PHANTOM = "phantom"
"""``--ct phantom``: the built-in chest phantom."""
POLYCHROMATIC = "polychromatic"
"""``--renderer polychromatic``: materials and a tube spectrum, traced with ``--tracer``."""


def add_engine_options(p: argparse.ArgumentParser) -> None:
    from ..drr.backends import DEFAULT_MAX_MEMORY_MB, RENDERERS

    p.add_argument("--renderer", choices=sorted(RENDERERS) + [POLYCHROMATIC], default="siddon",
                   help="DRR renderer (default: siddon); polychromatic = materials and a tube spectrum, traced "
                        "with --tracer")
    p.add_argument("--tracer", choices=sorted(RENDERERS), default="siddon",
                   help="ray tracer of the polychromatic renderer (default: siddon)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-memory-mb", type=float, default=DEFAULT_MAX_MEMORY_MB,
                   help=f"working-memory budget per detector tile (default {DEFAULT_MAX_MEMORY_MB:g})")
    p.add_argument("--step-voxels", type=float, default=1.0, help="trilinear step length in voxels (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: $DIFFREG_THREADS, else every core); several runs at once: cores / runs")


LEARNED = "learned"
"""``--similarity learned``: the learned similarity of ``--similarity-model`` (`DiffRegLogic.learning.similarity_inference`)."""


def add_registration_options(p: argparse.ArgumentParser, learned: bool = False) -> None:
    """The registration settings; ``learned``: also ``--similarity learned --similarity-model SIM.pt --polish``."""
    from ..registration.optimizers import OPTIMIZERS
    from ..registration.options import NUISANCES, PARAMETERIZATIONS, ROBUST_WEIGHTS, SEARCHES, RegistrationOptions
    from ..similarity.registry import SIMILARITIES

    d = RegistrationOptions()
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=d.optimizer, help="default: %(default)s")
    p.add_argument("--similarity", choices=sorted(SIMILARITIES) + ([LEARNED] if learned else []), default=d.similarity,
                   help="default: %(default)s" + ("; learned: the model of --similarity-model" if learned else ""))
    if learned:
        p.add_argument("--similarity-model", default=None,
                       help="with --similarity learned: the model file `diffreg train --kind similarity` wrote")
        p.add_argument("--polish", choices=["none"] + sorted(SIMILARITIES), default="zncc",
                       help="with --similarity learned: the image similarity of a final polish at the finest level "
                            "(default %(default)s; none: the learned result as it is)")
        p.add_argument("--polish-levels", type=float, nargs="+", default=[1.0],
                       help="with --similarity learned: the polish's pyramid levels (default: 1, the full size)")
    p.add_argument("--parameterization", choices=list(PARAMETERIZATIONS), default=d.parameterization,
                   help="pose parameters: se3 (motion about the CT centre) or spherical (C-arm model)")
    p.add_argument("--levels", type=float, nargs="+", default=list(d.levels),
                   help="detector downsampling factors, coarse to fine (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=d.max_iterations, help="iteration cap per level (default %(default)s)")
    p.add_argument("--n-starts", type=int, default=d.n_starts, help="random starts around the initial pose (default 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random starts (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("global search and robustness")
    g.add_argument("--search", choices=list(SEARCHES), default=d.search,
                   help="wide: score many candidate poses within --search-rot / --search-trans of the start on the "
                        "coarsest level and refine the best (for uncertain starts); default: %(default)s")
    g.add_argument("--search-rot", type=float, default=d.search_rotation_deg,
                   help="wide search range, deg about each axis (default %(default)s)")
    g.add_argument("--search-trans", type=float, default=d.search_translation_mm,
                   help="wide search range, mm along each axis (default %(default)s)")
    g.add_argument("--search-candidates", type=int, default=d.search_candidates,
                   help="candidate poses of the wide search (default %(default)s)")
    g.add_argument("--search-keep", type=int, default=d.search_keep,
                   help="best candidates refined by the local optimiser (default %(default)s)")
    g.add_argument("--robust", choices=list(ROBUST_WEIGHTS), default=d.robust,
                   help="outlier rejection: weight pixels by their residual (tukey) so instruments and anatomy the "
                        "CT lacks do not pull the pose; default: %(default)s")
    g.add_argument("--footprint-mask", action=argparse.BooleanOptionalAction, default=d.footprint_mask,
                   help="compare only pixels whose rays cross the CT (a CT shorter than the X-ray's field)")
    g.add_argument("--nuisance", choices=list(NUISANCES), default=d.nuisance,
                   help="low-frequency intensity terms fitted with the pose (scatter); default: %(default)s")


def add_hu_options(p: argparse.ArgumentParser) -> None:
    from ..volume.hu import HUToMu

    p.add_argument("--mu-water", type=float, default=HUToMu.mu_water, help="mu of water, 1/mm (default %(default)s)")
    p.add_argument("--bone-hu", type=float, default=HUToMu.bone_hu, help="HU of the bone point (default %(default)s)")
    p.add_argument("--mu-bone", type=float, default=None, help="mu at the bone point, 1/mm (default 2 x mu-water)")


def add_physics_options(p: argparse.ArgumentParser) -> None:
    from ..physics import OUTPUTS, RESPONSES
    from ..physics.calibration import MaterialThresholds

    g = p.add_argument_group("polychromatic renderer (--renderer polychromatic)")
    g.add_argument("--kvp", type=float, default=80.0, help="tube voltage: 60, 70, ..., 120 kVp (default 80)")
    g.add_argument("--filtration-mm-al", type=float, default=0.0, help="aluminium added to the 2.5 mm (default 0)")
    g.add_argument("--energy-bins", type=int, default=None, help="regroup the 1 keV spectrum into this many bins")
    g.add_argument("--detector-response", choices=RESPONSES, default="energy_integrating")
    g.add_argument("--signal", choices=OUTPUTS, default="line_integral",
                   help="output -log(I/I0) (default) or I/I0")
    t = MaterialThresholds()
    g.add_argument("--air-max-hu", type=float, default=t.air_max_hu, help="air up to this HU (default %(default)s)")
    g.add_argument("--bone-min-hu", type=float, default=t.bone_min_hu, help="bone above this HU (default %(default)s)")
    g.add_argument("--soft-width-hu", type=float, default=0.0, help="smooth material boundaries of this width (HU)")
    g.add_argument("--implant", action="append", default=[], metavar="LABEL=MATERIAL",
                   help="voxels of this label (--labels) are MATERIAL (e.g. 1=titanium); repeatable")


def add_realism_options(p: argparse.ArgumentParser, blur_default: str = "0") -> None:
    g = p.add_argument_group("realism (any renderer; output -log(I/I0) or I/I0 as --signal says)")
    g.add_argument("--noise-photons", type=float, default=None, help="Poisson noise: photons per unattenuated pixel")
    g.add_argument("--blur-mm", type=float, default=None,
                   help=f"detector PSF, Gaussian sigma in mm (default {blur_default})")
    g.add_argument("--scatter-fraction", type=float, default=0.0, help="scatter-to-primary ratio of a flat field")
    g.add_argument("--scatter-sigma-mm", type=float, default=40.0, help="width of the scatter kernel (default 40)")
    g.add_argument("--heel", type=float, default=0.0, help="heel effect: fluence change at the detector edge (+-)")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the noise (default 0)")


def registration_options(args):
    """`RegistrationOptions` from the command line (through `make_options`; polychromatic traces with --tracer).

    Torch-free, so that every command checks its settings before the heavy imports.
    """
    from ..registration.options import make_options

    similarity = args.similarity
    if similarity == LEARNED:  # the measure is loaded with the CT; the settings are checked with the polish's
        if getattr(args, "similarity_model", None) is None:
            raise InputError("--similarity learned needs --similarity-model SIM.pt (train one with diffreg train "
                             "--kind similarity)")
        similarity = "zncc" if args.polish == "none" else args.polish
    elif getattr(args, "similarity_model", None) is not None:
        raise InputError("--similarity-model is used only with --similarity learned")
    return make_options(
        optimizer=args.optimizer, similarity=similarity,
        renderer=args.tracer if args.renderer == POLYCHROMATIC else args.renderer,
        parameterization=args.parameterization, levels=tuple(args.levels), max_iterations=args.iterations,
        n_starts=args.n_starts, seed=args.seed, step_voxels=args.step_voxels, max_memory_mb=args.max_memory_mb,
        search=args.search, search_rotation_deg=args.search_rot, search_translation_mm=args.search_trans,
        search_candidates=args.search_candidates, search_keep=args.search_keep, robust=args.robust,
        footprint_mask=args.footprint_mask, nuisance=args.nuisance,
    )
