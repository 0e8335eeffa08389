"""``diffreg experiment landscape|robustness|polychromatic|realism|ablation|network-realism|similarity-*``.

Each writes CSV, Markdown and PNG into ``--out``.

``ablation`` trains the pose network once per row of the poster's Table 3 (``--rows``, `experiments.ABLATION_ROWS`)
with the same budget (``--train-minutes`` or ``--train-steps``) and tests each on ``--n`` held-out DRRs.
``network-realism`` tests a trained pose network (``--model``) on X-rays simulated with the realism presets, alone
and refined by each ``--variants`` (`cli.experiment_network`).
``realism`` registers simulated X-rays with documented degradations (``--presets``,
`physics.xray_simulation.PRESETS`) per registration variant (``--variants``, `experiments.REALISM_VARIANTS`).
``similarity-*`` compare learned similarities (``--similarity-models NAME=PATH``, files of ``diffreg train --kind
similarity``) with image ones (``--similarities``): capture ranges, convergence per optimiser (one model),
robustness (each model alone and with the ``--polish``) (`experiments.similarity_study`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .experiment_network import NETWORK_KINDS, check_network, run_network
from .experiment_similarity import SIMILARITY_KINDS, check_similarity, run_similarity
from .options import PHANTOM, POLYCHROMATIC, add_engine_options, add_hu_options, add_physics_options, add_realism_options

EXPERIMENT_FILES = {
    "landscape": ("landscape.csv", "landscape.md", "landscape.png"),
    "robustness": ("robustness.csv", "robustness.md", "robustness_curves.png", "robustness_mtre.png",
                   "robustness.partial.csv"),
    "polychromatic": ("polychromatic.csv", "polychromatic.md", "polychromatic.png", "polychromatic.partial.csv"),
    "realism": ("realism.csv", "realism.md", "realism.png", "realism.partial.csv"),
    "ablation": ("ablation.csv", "ablation_cases.csv", "ablation.md", "ablation.png", "ablation.partial.csv"),
    "network-realism": ("network_realism.csv", "network_realism.md", "network_realism.png",
                        "network_realism.partial.csv"),
    "similarity-landscape": ("landscape.csv", "landscape.md", "landscape.png", "capture_range.csv",
                             "similarity_landscape.md", "similarity_landscape.png"),
    "similarity-convergence": ("similarity_convergence.csv", "similarity_convergence_starts.csv",
                               "similarity_convergence.md", "similarity_convergence.png",
                               "similarity_convergence.partial.csv"),
    "similarity-robustness": ("similarity_robustness.csv", "similarity_robustness.md", "similarity_robustness.png",
                              "similarity_robustness.partial.csv"),
}
"""What each experiment writes into its ``--out`` folder (checked against the inputs before any work)."""
NEAR_STARTS = (10.0, 20.0)
"""Start range (deg, mm) of the polychromatic and realism experiments: the model's accuracy, not the capture range."""
DEFAULT_STARTS = {"robustness": 100, "polychromatic": 100, "realism": 10, "ablation": 20, "network-realism": 20,
                  "similarity-robustness": 100, "similarity-convergence": 10}
"""Random starts per experiment when ``--n`` is not given."""
CONVENTION_MODES = ("known", "detect")
"""``--convention`` of the realism experiment (`DiffRegLogic.experiments.realism_study.CONVENTION_MODES`)."""
REALISM_FLAGS = (("noise_photons", None), ("blur_mm", None), ("scatter_fraction", 0.0), ("scatter_sigma_mm", 40.0),
                 ("heel", 0.0), ("noise_seed", 0))
"""Realism flags (and their defaults) the realism experiment refuses: its presets say the degradations."""
WIDE_STARTS = (45.0, 60.0)
"""Start range (deg, mm) of the robustness experiment and the landscape's axes (the seed paper's)."""
CONVERGENCE_STARTS = (20.0, 30.0)
"""Start range (deg, mm) of the similarity-convergence experiment: starts the learned similarity should capture."""
DEFAULTS = {"optimizers": ("adam", "gddm", "gdm", "gd"), "levels": (8.0, 4.0, 2.0), "iterations": 150, "polish": "zncc"}
"""``--optimizers`` (polychromatic and similarity-robustness use the first), ``--levels``, ``--iterations`` and
``--polish`` when not given, unless `KIND_DEFAULTS` says otherwise."""
KIND_DEFAULTS = {"similarity-convergence": {"optimizers": ("gd", "adam", "lm"), "levels": (4.0,), "iterations": 50},
                 "similarity-robustness": {"optimizers": ("adam",)}}
"""Per-experiment defaults that differ from `DEFAULTS`."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("experiment", help="the seed paper's experiments: similarity landscape, robustness to the start")
    from ..experiments import REALISM_VARIANTS
    from ..physics import REALISM_PRESETS

    p.add_argument("kind", choices=["landscape", "robustness", "polychromatic", "realism", "ablation",
                                    *NETWORK_KINDS, *SIMILARITY_KINDS],
                   help="polychromatic: a realistic simulated X-ray registered with mono- and polychromatic DRRs; "
                        "realism: X-rays with scatter, noise, instruments, truncation, processing... (--presets) "
                        "registered per variant (--variants); ablation: the pose network's parts (--rows), each "
                        "trained with the same budget and tested on --n held-out DRRs; network-realism: a trained "
                        "pose network (--model) on X-rays of the realism presets, alone and refined per variant; "
                        "similarity-*: learned "
                        "similarities (--similarity-models) against image ones (--similarities): capture range, "
                        "convergence per optimiser, robustness")
    p.add_argument("--out", required=True, help="output folder (CSV, Markdown, PNG)")
    p.add_argument("--ct", default=PHANTOM, help="CT file or 'phantom' (default)")
    p.add_argument("--xray", default=None, help="X-ray (default: a DRR of the CT at the true pose)")
    p.add_argument("--geometry", default=None, help="detector geometry JSON (default: the demo's 200x200 detector)")
    p.add_argument("--truth", default=None, help="true pose JSON (default: the demo's target pose)")
    p.add_argument("--similarities", nargs="+", default=["zncc"], help="similarities (robustness uses the first)")
    p.add_argument("--optimizers", nargs="+", default=None,
                   help="robustness: optimisers (default adam gddm gdm gd); similarity-convergence: default gd adam "
                        "lm; similarity-robustness: the first (default adam)")
    p.add_argument("--n", type=int, default=None,
                   help="random starts (default 100; realism: 10 per preset and variant; ablation and "
                        "network-realism: 20 test poses)")
    p.add_argument("--max-rot", type=float, default=None,
                   help=f"range of the rotation offsets, deg (default {WIDE_STARTS[0]:g}; polychromatic: "
                        f"{NEAR_STARTS[0]:g})")
    p.add_argument("--max-trans", type=float, default=None,
                   help=f"range of the translation offsets, mm (default {WIDE_STARTS[1]:g}; polychromatic: "
                        f"{NEAR_STARTS[1]:g})")
    p.add_argument("--points", type=int, default=41, help="landscape: samples per axis (default 41)")
    p.add_argument("--levels", type=float, nargs="+", default=None,
                   help="robustness: pyramid levels (default 8 4 2: the full-size level is left out for speed; "
                        "similarity-convergence: 4)")
    p.add_argument("--iterations", type=int, default=None,
                   help="robustness: iteration cap per level (default 150; similarity-convergence: 50)")
    p.add_argument("--batch", type=int, default=25, help="robustness: starts registered together (default 25)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the starts (default 0); realism: also of the instruments and the noise")
    g = p.add_argument_group("realism experiment")
    g.add_argument("--presets", nargs="+", default=list(REALISM_PRESETS), metavar="PRESET",
                   help=f"degradations, each a simulated X-ray (default: all): {', '.join(REALISM_PRESETS)}")
    g.add_argument("--variants", nargs="+", default=["zncc"], metavar="VARIANT",
                   help=f"registration variants (default: zncc): {', '.join(REALISM_VARIANTS)}")
    g.add_argument("--convention", choices=CONVENTION_MODES, default="known",
                   help="turn the stored image into a line integral from its known convention (default) or detect it")
    g.add_argument("--detector-pixels", type=int, default=None,
                   help="realism: resample the detector to this many pixels along its longer side (same field)")
    from ..similarity.registry import SIMILARITIES

    s = p.add_argument_group("learned similarity experiments (similarity-landscape, -convergence, -robustness)")
    s.add_argument("--similarity-models", nargs="+", default=[], metavar="NAME=PATH",
                   help="learned similarities to compare, e.g. so4=sim.pt se3=sim_se3.pt euclidean=sim_euc.pt "
                        "(files of diffreg train --kind similarity); similarity-convergence takes exactly one")
    s.add_argument("--polish", choices=["none"] + sorted(SIMILARITIES), default=None,
                   help=f"similarity-robustness: each model runs alone and followed by this polish at full size "
                        f"(default {DEFAULTS['polish']}; none: alone only)")
    s.add_argument("--polish-levels", type=float, nargs="+", default=None,
                   help="similarity-robustness: also run each model followed by the polish over these pyramid levels "
                        "(e.g. 4 2 1), besides the polish at full size")
    from ..experiments import ABLATION_ROWS

    a = p.add_argument_group("ablation experiment (the poses are sampled in --max-rot / --max-trans, default 45 / 60)")
    a.add_argument("--rows", nargs="+", default=list(ABLATION_ROWS), metavar="ROW",
                   help=f"rows (default: all): {' '.join(ABLATION_ROWS)}")
    budget = a.add_mutually_exclusive_group()
    budget.add_argument("--train-minutes", type=float, default=None, help="training budget per row, minutes (default 10)")
    budget.add_argument("--train-steps", type=int, default=None, help="training steps per row instead of minutes")
    a.add_argument("--image-size", type=int, default=128, help="network input side (default 128)")
    a.add_argument("--backbone", choices=["efficientnet-b0", "small"], default="efficientnet-b0")
    a.add_argument("--source-to-isocenter", type=float, default=None,
                   help="reference AP view's source-to-CT-centre distance, mm (default: the demo's 600 for the "
                        "phantom, else SDD / 2)")
    a.add_argument("--hypotheses", type=int, default=4,
                   help="ablation and network-realism: network poses handed to the refinement (default 4)")
    w = p.add_argument_group("network-realism experiment (also --presets, --variants, --convention, --n, --seed; "
                             "--max-rot / --max-trans: the test poses' range, default the model's)")
    w.add_argument("--model", default=None, help="pose network from diffreg train (MODEL.pt) for this CT and "
                                                 "--geometry")
    add_engine_options(p)
    add_physics_options(p)
    add_hu_options(p)
    add_realism_options(p, blur_default="0; polychromatic: 0.5 when --noise-photons is not given")
    p.set_defaults(func=run, check=check)
    return p


def check(args):
    """Argument and output-folder errors, before any work; returns the checked `Outputs`."""
    from ..limits import MAX_ITERATIONS, MAX_STARTS, MAX_TRANSLATION_MM, SEED_RANGE, check_number
    from ..validation.outputs import Outputs

    if args.kind in ("polychromatic", "realism") and args.xray is not None:
        raise InputError(f"the {args.kind} experiment simulates its X-ray; drop --xray")
    if args.kind in ("realism", *NETWORK_KINDS):
        _check_realism(args)
    elif args.kind == "ablation":
        _check_ablation(args)
    models = check_similarity(args)
    network = check_network(args)
    if args.kind != "realism" and args.detector_pixels is not None:
        raise InputError("--detector-pixels is for the realism experiment; give a --geometry of that size instead")
    if args.implant:
        raise InputError("--implant needs a label map (--labels), which the experiments do not take; "
                         "diffreg render --labels takes one")
    check_number("--n", n_starts(args), 1, 100_000, integer=True)
    check_number("--batch", args.batch, 1, MAX_STARTS, integer=True)
    check_number("--points", args.points, 2, 1001, integer=True)
    check_number("--iterations", given(args, "iterations"), 1, MAX_ITERATIONS, integer=True)
    check_number("--seed", args.seed, *SEED_RANGE, integer=True)
    if args.max_rot is not None:
        check_number("--max-rot", args.max_rot, 0.0, 180.0, unit="deg")
    if args.max_trans is not None:
        check_number("--max-trans", args.max_trans, 0.0, MAX_TRANSLATION_MM, unit="mm")
    for level in given(args, "levels"):
        check_number("--levels", level, 0.0, 1e6, low_open=True)
    outputs = Outputs([args.ct, args.xray, args.geometry, args.truth, *models.values(), *network])
    outputs.folder(args.out, "--out", EXPERIMENT_FILES[args.kind])
    return outputs


def _check_realism(args) -> None:
    """The realism experiment's own arguments (torch-free): names, a monochromatic model, no realism flags."""
    from ..experiments import REALISM_VARIANTS
    from ..limits import MAX_DETECTOR_SIDE, check_number
    from ..physics import REALISM_PRESETS

    for option, names, table in (("--presets", args.presets, REALISM_PRESETS),
                                 ("--variants", args.variants, tuple(REALISM_VARIANTS))):
        for name in names:
            if name not in table:
                raise InputError(f"unknown {option[2:-1]} {name!r} ({option}); choose from {', '.join(table)}")
        if len(set(names)) != len(names):
            raise InputError(f"{option} lists a name twice: {' '.join(names)}")
    if args.renderer == POLYCHROMATIC:
        raise InputError(f"the {args.kind} experiment's model is monochromatic (its polychromatic preset simulates "
                         "the X-ray side); use --renderer siddon or trilinear")
    for name, default in REALISM_FLAGS:
        if getattr(args, name) != default:
            raise InputError(f"the {args.kind} experiment takes its degradations from --presets; drop "
                             f"--{name.replace('_', '-')}")
    if args.detector_pixels is not None:
        check_number("--detector-pixels", args.detector_pixels, 4, MAX_DETECTOR_SIDE, integer=True)


def _check_ablation(args) -> None:
    """The ablation experiment's own arguments (torch-free)."""
    from ..experiments import ABLATION_ROWS
    from ..limits import check_number

    for row in args.rows:
        if row not in ABLATION_ROWS:
            raise InputError(f"unknown ablation row {row!r} (--rows); choose from {' '.join(ABLATION_ROWS)}")
    if len(set(args.rows)) != len(args.rows):
        raise InputError(f"--rows lists a row twice: {' '.join(args.rows)}")
    if args.renderer == POLYCHROMATIC:
        raise InputError("the ablation trains on monochromatic DRRs; use --renderer siddon or trilinear")
    if args.xray is not None or args.truth is not None:
        raise InputError("the ablation renders its own held-out X-rays at known poses; drop --xray and --truth")
    if args.train_minutes is not None:
        check_number("--train-minutes", args.train_minutes, 0.0, 1e5, low_open=True, unit="min")
    if args.train_steps is not None:
        check_number("--train-steps", args.train_steps, 1, 10**8, integer=True)
    if args.image_size < 32 or args.image_size % 32 or args.image_size > 1024:
        raise InputError(f"--image-size must be a multiple of 32 from 32 to 1024, got {args.image_size}")
    if args.max_trans is not None and not args.max_trans > 0:
        raise InputError("--max-trans must be positive for the ablation: the network's translation output is scaled "
                         "by it")
    if args.source_to_isocenter is not None:
        check_number("--source-to-isocenter", args.source_to_isocenter, 0.0, 1e5, low_open=True, unit="mm")
    check_number("--hypotheses", args.hypotheses, 1, 64, integer=True)


def given(args, name: str):
    """``args.<name>`` (a list as a tuple), else the experiment's default (`KIND_DEFAULTS`, `DEFAULTS`)."""
    value = getattr(args, name)
    if value is None:
        return KIND_DEFAULTS.get(args.kind, {}).get(name, DEFAULTS[name])
    return tuple(value) if isinstance(value, list) else value


def n_starts(args) -> int:
    """``--n``, else the experiment's default (`DEFAULT_STARTS`); the namespace is not changed."""
    return DEFAULT_STARTS.get(args.kind, 100) if args.n is None else args.n


def start_range(args) -> tuple[float, float]:
    """(max rotation deg, max translation mm) of the starts: the user's, else the experiment's default.

    Computed, not written back into ``args``: the namespace the user passed stays as given.
    """
    near = args.kind in ("polychromatic", "realism")  # the ablation samples its poses in the seed paper's range
    rot, trans = NEAR_STARTS if near else CONVERGENCE_STARTS if args.kind == "similarity-convergence" else WIDE_STARTS
    return (rot if args.max_rot is None else args.max_rot, trans if args.max_trans is None else args.max_trans)


def _case(args, device):
    """CT, X-ray and true pose of an experiment: given files, or the demo's phantom and target."""
    import torch

    from ..drr.rendering import render
    from ..experiments.demo import demo_detector, demo_poses
    from ..geometry.files import read_geometry, read_pose
    from .common import dtype_of, hu_conversion, load_ct, model

    volume = load_ct(args.ct, hu_conversion(args), dtype_of(args.dtype)).to(device)
    simulated = args.kind in ("polychromatic", "realism", "ablation", *NETWORK_KINDS)
    if not simulated:
        volume, _ = model(args, volume)
    center = volume.center.to(torch.float64).cpu()
    detector = read_geometry(args.geometry) if args.geometry is not None else demo_detector()
    if args.kind == "realism" and args.detector_pixels is not None:
        factor = max(detector.rows, detector.cols) / args.detector_pixels
        if factor < 1:
            raise InputError(f"--detector-pixels {args.detector_pixels} is more than the detector's "
                             f"{max(detector.rows, detector.cols)} pixels; it only resamples to fewer")
        detector = detector.downsample(factor)
    truth = read_pose(args.truth).reshape(4, 4) if args.truth is not None else demo_poses(center)[0]
    if args.xray is not None and not simulated:
        from ..xray.image import check_xray
        from ..xray.readers import read_xray

        image = read_xray(args.xray).image
        check_xray(image, detector)
        image = image.to(device=device, dtype=volume.mu.dtype)
    elif simulated:
        image = None  # the experiment simulates its own X-ray
    else:
        with torch.no_grad():
            image = render(volume, detector, truth, args.tracer if args.renderer == POLYCHROMATIC else args.renderer,
                           step_voxels=args.step_voxels, max_memory_mb=args.max_memory_mb)[0]
    return volume, image, detector, truth


def run(args, outputs=None) -> int:
    from dataclasses import replace

    from .. import experiments
    from .common import (DEFAULT_EXPERIMENT_BLUR_MM, DEFAULT_EXPERIMENT_PHOTONS, beam_of, device_of, hu_conversion,
                         realism_of, thresholds_of)
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    device = device_of(args)
    volume, image, detector, truth = _case(args, device)
    out = Path(args.out)
    ct_name = "built-in chest phantom" if args.ct == PHANTOM else str(args.ct)
    tracer = args.tracer if args.renderer == POLYCHROMATIC else args.renderer
    max_rot, max_trans = start_range(args)
    common = dict(levels=given(args, "levels"), renderer=tracer, similarity=args.similarities[0],
                  max_iterations=given(args, "iterations"), step_voxels=args.step_voxels,
                  max_memory_mb=args.max_memory_mb)
    with outputs.staged() as stage:  # the folder is removed again if the experiment fails before writing to it
        stage.folder(out)
        if args.kind == "ablation":
            report = _ablation(args, volume, detector, out, ct_name)
        elif args.kind in NETWORK_KINDS:
            report = run_network(args, volume, detector, out, ct_name, device)
        elif args.kind in SIMILARITY_KINDS:
            report = run_similarity(args, volume, image, detector, truth, out, common, ct_name, device)
        elif args.kind == "realism":
            report = experiments.realism(volume, detector, truth, out, presets=tuple(args.presets),
                                         variants=tuple(args.variants), n=n_starts(args), max_rotation_deg=max_rot,
                                         max_translation_mm=max_trans, seed=args.seed, options=common,
                                         convention=args.convention, hu_to_mu=hu_conversion(args), ct_name=ct_name)
        elif args.kind == "polychromatic":
            realism = realism_of(args)
            if args.noise_photons is None:
                blur = DEFAULT_EXPERIMENT_BLUR_MM if args.blur_mm is None else args.blur_mm
                realism = replace(realism, photons_per_pixel=DEFAULT_EXPERIMENT_PHOTONS, blur_mm=blur)
            report = experiments.polychromatic(volume, detector, truth, out, beam=beam_of(args), realism=realism,
                                               hu_to_mu=hu_conversion(args), n=n_starts(args), max_rotation_deg=max_rot,
                                               max_translation_mm=max_trans, seed=args.seed,
                                               options=dict(common, optimizer=given(args, "optimizers")[0]),
                                               batch=args.batch, ct_name=ct_name, thresholds=thresholds_of(args))
        elif args.kind == "landscape":
            report = experiments.landscape(volume, image, detector, truth, out, similarities=tuple(args.similarities),
                                           renderer=tracer, rotation_range_deg=max_rot,
                                           translation_range_mm=max_trans, n_points=args.points)
        else:
            report = experiments.robustness(volume, image, detector, truth, out, optimizers=given(args, "optimizers"),
                                            n=n_starts(args), max_rotation_deg=max_rot, max_translation_mm=max_trans,
                                            seed=args.seed, options=common, batch=args.batch, ct_name=ct_name)
    written = sorted(str(v) for v in _paths(report))
    print("wrote " + ", ".join(written))
    return 0


def _ablation(args, volume, detector, out, ct_name):
    """Run the ablation experiment with the command line's training settings."""
    from argparse import Namespace
    from dataclasses import replace

    from .. import experiments
    from ..experiments.demo import DEMO_SOURCE_TO_ISOCENTER_MM
    from ..learning.poses import reference_view
    from .train import train_config

    max_rot, max_trans = start_range(args)
    minutes = args.train_minutes if args.train_minutes is not None or args.train_steps is not None else 10.0
    train_args = Namespace(image_size=args.image_size, backbone=args.backbone, no_decoder=False, no_attention=False,
                           no_positional_embedding=False, rotation="6d", max_rot=max_rot, max_trans=max_trans,
                           batch_size=16, steps=args.train_steps, minutes=minutes, pose_loss="poster",
                           no_incremental=False, seed=args.seed, renderer=args.renderer, pool_images=None, lr=None,
                           no_augmentation=False)
    config = replace(train_config(train_args), device=str(volume.mu.device))
    distance = args.source_to_isocenter
    if distance is None and args.ct == PHANTOM and args.geometry is None:
        distance = DEMO_SOURCE_TO_ISOCENTER_MM
    reference = reference_view(volume, detector, distance)
    return experiments.ablation(volume, detector, reference, out, config, rows=tuple(args.rows), n=n_starts(args),
                                seed=args.seed, hypotheses=args.hypotheses, ct_name=ct_name)


def _paths(report) -> list:
    if isinstance(report, dict):
        return [path for value in report.values() for path in _paths(value)]
    return [report] if isinstance(report, (str, Path)) and str(report).endswith((".csv", ".md", ".png")) else []
