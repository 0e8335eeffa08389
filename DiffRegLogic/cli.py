"""The ``diffreg`` command line tool: a thin layer over the engine.

    diffreg demo     --out DIR                    # the main job on the built-in phantom
    diffreg register --ct CT --xray X --geometry G.json --init P.json --out R.json
    diffreg render   --ct CT --geometry G.json --pose P.json --out OUT
    diffreg experiment landscape|robustness --out DIR [--n 100 --max-rot 45 --max-trans 60]
    diffreg pose   --ct CT --clinical PRIMARY SECONDARY --source-to-isocenter 600 --out P.json

Errors in the input (missing files, bad JSON, wrong shapes, CUDA absent) print
one ``error: ...`` line that says what to fix and exit with status 2. Input
files are only read; outputs go to the paths given.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import __version__, geometry, io
from .devices import resolve_device
from .drr import DEFAULT_MAX_MEMORY_MB, RENDERERS, render
from .errors import InputError
from .geometry import Detector
from .volume import HUToMu, Volume

PHANTOM = "phantom"
POLYCHROMATIC = "polychromatic"
# `diffreg experiment polychromatic` simulates its X-ray with this noise and PSF unless told otherwise
DEFAULT_EXPERIMENT_PHOTONS = 2e4
DEFAULT_EXPERIMENT_BLUR_MM = 0.5

# The demo's C-arm: a 200 x 200 detector of 3 mm pixels at SDD 1020 mm, the
# source 600 mm from the isocentre (the phantom's centre), a slightly oblique
# AP view; the start pose is the target moved by a known rigid perturbation.
DEMO_DETECTOR = dict(rows=200, cols=200, sdd=1020.0, pixel_spacing=(3.0, 3.0))
DEMO_SOURCE_TO_ISOCENTER_MM = 600.0
DEMO_TARGET_DEG = (8.0, -5.0, 0.0)  # spherical theta, phi, gamma (degrees)
DEMO_PERTURBATION = (4.0, -3.0, 5.0, 8.0, -6.0, 10.0)  # rotation (deg) about the CT centre, translation (mm)


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def load_ct(path: str, hu_to_mu: HUToMu, dtype: torch.dtype, labels: str | None = None) -> Volume:
    """A CT file/DICOM folder, or the built-in phantom when ``path == "phantom"``."""
    if path == PHANTOM:
        if labels is not None:
            raise InputError("--labels needs a CT file; the built-in phantom has no label map")
        from .phantoms import chest_phantom

        return chest_phantom(hu_to_mu=hu_to_mu, dtype=dtype)
    return io.read_volume(path, hu_to_mu, labels, dtype)


def overlay_rgb(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Colour overlay (H, W, 3) uint8: fixed in magenta (red + blue), moving in green.

    Where the two agree the picture is grey; misaligned edges show as magenta
    (only in the fixed image) and green (only in the moving image). Each image
    is windowed on its own percentiles.
    """
    f, m = io.to_uint8(fixed), io.to_uint8(moving)
    return np.stack([f, m, f], -1)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
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


def _add_registration_options(p: argparse.ArgumentParser) -> None:
    from .optimizers import OPTIMIZERS
    from .registration import PARAMETERIZATIONS, RegistrationOptions
    from .similarity import SIMILARITIES

    d = RegistrationOptions()
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=d.optimizer, help="default: %(default)s")
    p.add_argument("--similarity", choices=sorted(SIMILARITIES), default=d.similarity, help="default: %(default)s")
    p.add_argument("--parameterization", choices=list(PARAMETERIZATIONS), default=d.parameterization,
                   help="pose parameters: se3 (motion about the CT centre) or spherical (C-arm model)")
    p.add_argument("--levels", type=float, nargs="+", default=list(d.levels),
                   help="detector downsampling factors, coarse to fine (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=d.max_iterations, help="iteration cap per level (default %(default)s)")
    p.add_argument("--n-starts", type=int, default=d.n_starts, help="random starts around the initial pose (default 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random starts (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_hu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mu-water", type=float, default=HUToMu.mu_water, help="mu of water, 1/mm (default %(default)s)")
    p.add_argument("--bone-hu", type=float, default=HUToMu.bone_hu, help="HU of the bone point (default %(default)s)")
    p.add_argument("--mu-bone", type=float, default=None, help="mu at the bone point, 1/mm (default 2 x mu-water)")


def _hu_to_mu(args) -> HUToMu:
    if not hasattr(args, "mu_water"):  # commands without HU options (demo) use the default conversion
        return HUToMu()
    return HUToMu(mu_water=args.mu_water, bone_hu=args.bone_hu, mu_bone=args.mu_bone)


def _add_physics_options(p: argparse.ArgumentParser) -> None:
    from .materials import MaterialThresholds
    from .physics import OUTPUTS, RESPONSES

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


def _add_realism_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("realism (any renderer; output -log(I/I0) or I/I0 as --signal says)")
    g.add_argument("--noise-photons", type=float, default=None, help="Poisson noise: photons per unattenuated pixel")
    g.add_argument("--blur-mm", type=float, default=0.0, help="detector PSF, Gaussian sigma in mm (default 0)")
    g.add_argument("--scatter-fraction", type=float, default=0.0, help="scatter-to-primary ratio of a flat field")
    g.add_argument("--scatter-sigma-mm", type=float, default=40.0, help="width of the scatter kernel (default 40)")
    g.add_argument("--heel", type=float, default=0.0, help="heel effect: fluence change at the detector edge (+-)")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the noise (default 0)")


def _realism(args):
    from .realism import Realism

    return Realism(photons_per_pixel=args.noise_photons, blur_mm=args.blur_mm, scatter_fraction=args.scatter_fraction,
                   scatter_sigma_mm=args.scatter_sigma_mm, heel=args.heel, seed=args.noise_seed)


def _beam(args):
    from .physics import Beam, tube_spectrum

    spectrum = tube_spectrum(args.kvp, args.filtration_mm_al, n_bins=args.energy_bins)
    return Beam(spectrum, args.detector_response, args.signal)


def _implants(specs: Sequence[str]) -> dict[int, str]:
    implants = {}
    for spec in specs:
        label, sep, material = spec.partition("=")
        if not sep or not label.strip().lstrip("-").isdigit() or not material.strip():
            raise InputError(f"--implant takes LABEL=MATERIAL (e.g. 1=titanium), got {spec!r}")
        implants[int(label)] = material.strip()
    return implants


def _model(args, volume: Volume) -> tuple[Volume, str]:
    """(volume to render, ray tracer): the CT itself, or its materials for ``--renderer polychromatic``."""
    if args.renderer != POLYCHROMATIC:
        return volume, args.renderer
    from .materials import MaterialThresholds, MaterialVolume

    implants = _implants(args.implant)
    if implants and volume.labels is None:
        raise InputError("--implant needs a label map on the CT grid: give --labels (diffreg render takes one)")
    thresholds = MaterialThresholds(args.air_max_hu, args.bone_min_hu, args.soft_width_hu)
    model = MaterialVolume.from_volume(volume.to("cpu"), _beam(args), _hu_to_mu(args), thresholds=thresholds,
                                       implants=implants or None)
    return model.to(volume.mu.device), args.tracer


# --------------------------------------------------------------------------
# diffreg render
# --------------------------------------------------------------------------


def cmd_render(args) -> int:
    device = resolve_device(args.device)
    detector = io.read_geometry(args.geometry)
    pose = io.read_pose(args.pose)
    out = Path(args.out)
    io.check_image_suffix(out)
    from .realism import simulate_radiograph

    realism = _realism(args)
    volume = load_ct(args.ct, _hu_to_mu(args), _dtype(args.dtype), args.labels)
    if args.implant and args.renderer != POLYCHROMATIC:
        raise InputError("--implant applies to --renderer polychromatic")
    volume, tracer = _model(args, volume)
    if args.keep_labels:
        volume = volume.masked(args.keep_labels)
    volume = volume.to(device)
    start = time.perf_counter()
    options = dict(step_voxels=args.step_voxels, max_memory_mb=args.max_memory_mb)
    with torch.no_grad():
        if realism.is_identity and (args.signal == "line_integral" or args.renderer == POLYCHROMATIC):
            drr = render(volume, detector, pose, tracer, **options)
        else:
            drr = simulate_radiograph(volume, detector, pose, realism, tracer, args.signal, **options)
    seconds = time.perf_counter() - start
    io.write_image(out, drr[0], detector)
    what = args.renderer if args.renderer != POLYCHROMATIC else f"polychromatic ({tracer}, {volume.beam.spectrum.name})"
    print(f"wrote {out} ({detector.rows}x{detector.cols}, {what} on {device}, {seconds:.2f} s; "
          f"range {float(drr.min()):.3g}..{float(drr.max()):.3g})")
    return 0


# --------------------------------------------------------------------------
# diffreg pose
# --------------------------------------------------------------------------


def cmd_pose(args) -> int:
    center = load_ct(args.ct, HUToMu(), torch.float32).center
    isocenter = torch.as_tensor(args.isocenter, dtype=torch.float64) if args.isocenter else center
    if args.clinical is not None:
        primary, secondary = args.clinical
        pose = geometry.clinical_to_pose(primary, secondary, args.source_to_isocenter, isocenter)
        described = {"clinical": {"primary_deg": primary, "secondary_deg": secondary,
                                  "source_to_isocenter_mm": args.source_to_isocenter}}
    else:
        theta, phi, gamma, bx, by, bz = args.spherical
        params = torch.tensor([np.deg2rad(theta), np.deg2rad(phi), np.deg2rad(gamma), bx, by, bz], dtype=torch.float64)
        pose = geometry.spherical_carm_to_pose(params, args.sdd, center, radius=args.source_to_isocenter)
        described = {"spherical": {"theta_deg": theta, "phi_deg": phi, "gamma_deg": gamma,
                                   "b_mm": [bx, by, bz], "radius_mm": args.source_to_isocenter or args.sdd / 2}}
    data = io.pose_to_dict(pose)
    data["isocenter_ras_mm"] = isocenter.tolist()
    data.update(described)
    io.write_json(args.out, data)
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------
# diffreg demo
# --------------------------------------------------------------------------


def demo_poses(center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, start) camera_from_world (4, 4) float64 of the demo."""
    theta, phi, gamma = np.deg2rad(DEMO_TARGET_DEG)
    params = torch.tensor([theta, phi, gamma, 0.0, 0.0, 0.0], dtype=torch.float64)
    target = geometry.spherical_carm_to_pose(params, DEMO_DETECTOR["sdd"], center, radius=DEMO_SOURCE_TO_ISOCENTER_MM)
    rx, ry, rz, tx, ty, tz = DEMO_PERTURBATION
    rotation = geometry.euler_to_matrix(torch.tensor(np.deg2rad([rz, rx, ry]), dtype=torch.float64), "ZXY")
    motion = geometry.motion_about_center(rotation, torch.tensor([tx, ty, tz], dtype=torch.float64), center)
    start = target @ motion
    return target, start


def pose_difference(a: torch.Tensor, b: torch.Tensor, center: torch.Tensor) -> dict:
    """Rotation angle (deg) and translation (mm, at ``center``) of the motion taking pose a to pose b."""
    motion = geometry.invert_rigid(a) @ b
    angle = float(geometry.so3_log(motion[:3, :3]).norm())
    moved_center = motion[:3, :3] @ center + motion[:3, 3]
    return {"rotation_deg": float(np.rad2deg(angle)), "translation_mm": float((moved_center - center).norm())}


def _registration_options(args):
    """RegistrationOptions from the command line (the polychromatic renderer traces with --tracer)."""
    from .registration import RegistrationOptions

    return RegistrationOptions(
        optimizer=args.optimizer, similarity=args.similarity,
        renderer=args.tracer if args.renderer == POLYCHROMATIC else args.renderer,
        parameterization=args.parameterization, levels=tuple(args.levels), max_iterations=args.iterations,
        n_starts=args.n_starts, seed=args.seed, step_voxels=args.step_voxels, max_memory_mb=args.max_memory_mb,
    )


def _progress_printer(quiet: bool):
    """A registration callback printing one line per level (the last iteration's best similarity)."""
    state = {"level": None}

    def callback(progress) -> None:
        if quiet:
            return
        if progress.level != state["level"]:
            state["level"] = progress.level
            print(f"  level {progress.level + 1}/{progress.n_levels}: similarity {progress.similarity:.4f} "
                  f"({progress.elapsed:.1f} s)", flush=True)

    return callback


def _loss_curve(result) -> np.ndarray:
    """Best similarity per iteration, one series per level; for similarities bounded by 1, 1 - similarity on a log axis."""
    from .figures import line_plot

    name = result.options.get("similarity", "similarity")
    bounded = name != "mi"
    series = {}
    offset = 0
    for level in sorted({e["level"] for e in result.trace}):
        entries = [e for e in result.trace if e["level"] == level]
        values = [(1.0 - e["best_similarity"]) if bounded else e["best_similarity"] for e in entries]
        if bounded:
            values = [v if v > 0 else float("nan") for v in values]
        series[f"level {level + 1}"] = ([offset + e["iteration"] for e in entries], values)
        offset += len(entries)
    return line_plot(series, title="registration: best similarity so far", xlabel="iteration",
                     ylabel=f"1 - {name}" if bounded else name, log_y=bounded)


def _pose_report(estimate: torch.Tensor, truth: torch.Tensor, volume: Volume, detector: Detector) -> dict:
    from . import evaluation

    points = evaluation.target_points(volume.to("cpu"), 2000)
    center = volume.center.to(torch.float64).cpu()
    return {
        "mtre_mm": float(evaluation.mtre(estimate, truth, points)),
        "mpd_mm": float(evaluation.mpd(estimate, truth, points, detector)),
        "mrpd_mm": float(evaluation.mrpd(estimate, truth, points, detector)),
        "rotation_error_deg": float(evaluation.rotation_error_deg(estimate, truth)),
        "translation_error_mm": float(evaluation.translation_error_mm(estimate, truth, center)),
    }


def cmd_demo(args) -> int:
    from . import figures
    from .phantoms import chest_phantom
    from .registration import register
    from .similarity import image_metrics

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    volume, tracer = _model(args, chest_phantom(dtype=_dtype(args.dtype)))
    volume = volume.to(device)
    t_phantom = time.perf_counter() - t0
    detector = Detector(**DEMO_DETECTOR)
    center = volume.center.cpu().to(torch.float64)
    target, start = demo_poses(center)
    with torch.no_grad():
        drrs = render(volume, detector, torch.stack([target, start]), tracer, max_memory_mb=args.max_memory_mb)
    xray, moving = drrs[0], drrs[1]
    offset = pose_difference(target, start, center)
    print(f"X-ray: a DRR of the phantom at the target pose ({detector.rows}x{detector.cols}); start "
          f"{offset['rotation_deg']:.1f} deg / {offset['translation_mm']:.1f} mm away; registering "
          f"({args.optimizer}, {args.similarity}, {args.renderer} on {device})", flush=True)
    result = register(volume, xray, detector, start, _registration_options(args), callback=_progress_printer(args.quiet))
    with torch.no_grad():
        final = render(volume, detector, result.pose, tracer, max_memory_mb=args.max_memory_mb)[0]
    fixed, before, after = xray.cpu().numpy(), moving.cpu().numpy(), final.cpu().numpy()
    io.write_image(out / "target.npy", fixed)
    io.write_image(out / "target.png", fixed)
    io.write_image(out / "start.png", before)
    io.write_image(out / "registered.png", after)
    _write_png(out / "overlay.png", overlay_rgb(fixed, before))
    figures.save_png(out / "before_after.png", figures.before_after(fixed, before, after))
    figures.save_png(out / "checkerboard.png", figures.checkerboard(fixed, after))
    figures.save_png(out / "loss_curve.png", _loss_curve(result))
    io.write_json(out / "geometry.json", io.detector_to_dict(detector))
    io.write_json(out / "target_pose.json", io.pose_to_dict(target))
    io.write_json(out / "start_pose.json", io.pose_to_dict(start))
    io.write_json(out / "registered_pose.json", io.pose_to_dict(result.pose))
    before_err = _pose_report(start, target, volume, detector)
    after_err = _pose_report(result.pose, target, volume, detector)
    files = ["result.json", "before_after.png", "checkerboard.png", "loss_curve.png", "overlay.png", "target.png",
             "start.png", "registered.png", "target.npy", "geometry.json", "target_pose.json", "start_pose.json",
             "registered_pose.json"]
    summary = {
        "diffreg_version": __version__,
        "ct": "built-in chest phantom (DiffRegLogic.phantoms.chest_phantom)",
        "xray": "DRR of the phantom at target_pose.json",
        "device": str(device),
        "geometry": io.detector_to_dict(detector),
        "registered": True,
        "target_camera_from_world": target.tolist(),
        "start_camera_from_world": start.tolist(),
        "error_before": before_err,
        "error_after": after_err,
        "image_metrics_before": image_metrics(drrs[1], xray),
        "image_metrics_after": image_metrics(final, xray),
        "seconds": {"phantom": round(t_phantom, 3), "registration": round(result.seconds, 3)},
        "files": files,
        "registration": {k: v for k, v in result.to_dict().items() if k != "trace"},
    }
    io.write_json(out / "result.json", summary)
    state = "converged" if result.converged else f"stopped ({result.stop_reason})"
    print(f"registration {state} in {result.seconds:.1f} s, {result.iterations} iterations: "
          f"mTRE {before_err['mtre_mm']:.1f} -> {after_err['mtre_mm']:.2f} mm, "
          f"rotation error {after_err['rotation_error_deg']:.2f} deg, ZNCC {result.initial_similarity:.3f} -> "
          f"{result.similarity:.4f}")
    print(f"wrote {out}/result.json, {out}/before_after.png (DRR edges over the X-ray), {out}/loss_curve.png")
    return 0


# --------------------------------------------------------------------------
# diffreg register
# --------------------------------------------------------------------------


def _read_registration_inputs(args, device):
    """X-ray, detector, CT volume and initial pose from the command line (all checked before any work)."""
    from .xray import check_xray, crop_detector, flip_detector, read_xray

    crop = args.crop if args.crop in ("none", "auto") else tuple(int(v) for v in args.crop.split(","))
    xray = read_xray(args.xray, intensity=args.intensity, frame=args.frame, flip_rows=args.flip_rows,
                     flip_cols=args.flip_cols, crop=crop)
    if args.geometry is not None:
        detector = io.read_geometry(args.geometry)
        rows, cols = xray.meta.get("shape_read", xray.shape)
        if (detector.rows, detector.cols) == (rows, cols):
            detector = flip_detector(detector, rows=args.flip_rows, cols=args.flip_cols)
            margins = xray.meta.get("crop")
            if margins and any(margins):
                detector = crop_detector(detector, *margins)
    elif xray.detector is not None:
        detector = xray.detector
    else:
        raise InputError(
            f"no geometry for {args.xray}: give --geometry G.json (source_to_detector_mm, rows, cols, "
            "pixel_spacing_mm), or use a DICOM X-ray with DistanceSourceToDetector and ImagerPixelSpacing"
        )
    check_xray(xray.image, detector)
    volume = _model(args, load_ct(args.ct, _hu_to_mu(args), _dtype(args.dtype)))[0].to(device)
    center = volume.center.to(torch.float64).cpu()
    if args.init is not None:
        initial = io.read_pose(args.init)
    else:
        initial = xray.initial_pose(center)
    truth = io.read_pose(args.truth) if args.truth is not None else None
    return xray, detector, volume, initial, truth


def cmd_register(args) -> int:
    from . import figures
    from .registration import register
    from .similarity import image_metrics

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise InputError(f"--out must be a .json file for the result, got {out}")
    for option in ("overlay", "curve"):
        path = getattr(args, option)
        if path is not None and not str(path).lower().endswith(".png"):
            raise InputError(f"--{option} must be a .png file, got {path}")
    if args.drr is not None:
        io.check_image_suffix(args.drr)
    device = resolve_device(args.device)
    options = _registration_options(args)
    options.validate()
    xray, detector, volume, initial, truth = _read_registration_inputs(args, device)
    image = xray.image.to(device=device, dtype=volume.mu.dtype)
    mask = None if xray.mask is None else xray.mask.to(device)
    print(f"registering {args.ct} to {args.xray} ({detector.rows}x{detector.cols}; {options.optimizer}, "
          f"{options.similarity}, {options.renderer} on {device})", flush=True)
    result = register(volume, image, detector, initial, options, mask=mask, callback=_progress_printer(args.quiet))
    with torch.no_grad():
        final = render(volume, detector, torch.stack([initial.to(torch.float64), result.pose]), options.renderer,
                       max_memory_mb=options.max_memory_mb)
    report = result.to_dict()
    if not args.trace:
        report.pop("trace")
    report.update({
        "diffreg_version": __version__,
        "ct": str(args.ct),
        "xray": str(args.xray),
        "xray_meta": {k: v for k, v in xray.meta.items() if k in ("format", "intensity", "crop", "collimation", "notes")},
        "geometry": io.detector_to_dict(detector),
        "device": str(device),
        "image_metrics_initial": image_metrics(final[0], image, mask),
        "image_metrics": image_metrics(final[1], image, mask),
    })
    if truth is not None:
        report["error_initial"] = _pose_report(initial, truth, volume, detector)
        report["error"] = _pose_report(result.pose, truth, volume, detector)
    # every output is written only now, after the registration succeeded
    if args.drr is not None:
        io.write_image(args.drr, final[1], detector)
    if args.overlay is not None:
        figures.save_png(args.overlay, figures.before_after(image.cpu().numpy(), final[0].cpu().numpy(),
                                                            final[1].cpu().numpy()))
    if args.curve is not None:
        figures.save_png(args.curve, _loss_curve(result))
    io.write_json(out, report)
    state = "converged" if result.converged else f"did NOT converge ({result.stop_reason})"
    line = (f"registration {state}: similarity {result.initial_similarity:.4f} -> {result.similarity:.4f}, "
            f"{result.iterations} iterations, {result.seconds:.1f} s")
    if truth is not None:
        line += f"; mTRE {report['error_initial']['mtre_mm']:.2f} -> {report['error']['mtre_mm']:.2f} mm"
    print(line)
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------
# diffreg experiment
# --------------------------------------------------------------------------


def _experiment_case(args, device):
    """CT, X-ray and true pose of an experiment: given files, or the demo's phantom and target."""
    volume = load_ct(args.ct, _hu_to_mu(args), _dtype(args.dtype)).to(device)
    if args.kind != "polychromatic":
        volume, _ = _model(args, volume)
    center = volume.center.to(torch.float64).cpu()
    if args.geometry is not None:
        detector = io.read_geometry(args.geometry)
    else:
        detector = Detector(**DEMO_DETECTOR)
    truth = io.read_pose(args.truth).reshape(4, 4) if args.truth is not None else demo_poses(center)[0]
    if args.xray is not None and args.kind != "polychromatic":
        from .xray import check_xray, read_xray

        image = read_xray(args.xray).image
        check_xray(image, detector)
        image = image.to(device=device, dtype=volume.mu.dtype)
    elif args.kind == "polychromatic":
        image = None  # the experiment simulates its own X-ray
    else:
        with torch.no_grad():
            image = render(volume, detector, truth, args.tracer if args.renderer == POLYCHROMATIC else args.renderer)[0]
    return volume, image, detector, truth


def cmd_experiment(args) -> int:
    from . import experiments

    device = resolve_device(args.device)
    volume, image, detector, truth = _experiment_case(args, device)
    out = Path(args.out)
    ct_name = "built-in chest phantom" if args.ct == PHANTOM else str(args.ct)
    tracer = args.tracer if args.renderer == POLYCHROMATIC else args.renderer
    near = args.kind == "polychromatic"  # registrations from near starts: the model's accuracy, not capture range
    if args.max_rot is None:
        args.max_rot = 10.0 if near else 45.0
    if args.max_trans is None:
        args.max_trans = 20.0 if near else 60.0
    if args.kind == "polychromatic":
        if args.xray is not None:
            raise InputError("the polychromatic experiment simulates its X-ray; drop --xray")
        options = dict(levels=tuple(args.levels), renderer=tracer, similarity=args.similarities[0],
                       max_iterations=args.iterations, optimizer=args.optimizers[0])
        realism = _realism(args)
        if args.noise_photons is None:
            realism = replace(realism, photons_per_pixel=DEFAULT_EXPERIMENT_PHOTONS,
                              blur_mm=args.blur_mm or DEFAULT_EXPERIMENT_BLUR_MM)
        report = experiments.polychromatic(volume, detector, truth, out, beam=_beam(args), realism=realism,
                                           hu_to_mu=_hu_to_mu(args), n=args.n, max_rotation_deg=args.max_rot,
                                           max_translation_mm=args.max_trans, seed=args.seed, options=options,
                                           batch=args.batch, ct_name=ct_name)
    elif args.kind == "landscape":
        report = experiments.landscape(volume, image, detector, truth, out, similarities=tuple(args.similarities),
                                       renderer=tracer, rotation_range_deg=args.max_rot,
                                       translation_range_mm=args.max_trans, n_points=args.points)
    else:
        options = dict(levels=tuple(args.levels), renderer=tracer, similarity=args.similarities[0],
                       max_iterations=args.iterations)
        report = experiments.robustness(volume, image, detector, truth, out, optimizers=tuple(args.optimizers),
                                        n=args.n, max_rotation_deg=args.max_rot, max_translation_mm=args.max_trans,
                                        seed=args.seed, options=options, batch=args.batch, ct_name=ct_name)
    written = sorted(str(v) for v in _paths(report))
    print("wrote " + ", ".join(written))
    return 0


def _paths(report) -> list:
    found = []
    if isinstance(report, dict):
        for value in report.values():
            found += _paths(value)
    elif isinstance(report, (str, Path)) and str(report).endswith((".csv", ".md", ".png")):
        found.append(report)
    return found


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffreg", description="Differentiable DRRs and 2D/3D CT-to-X-ray registration.")
    parser.add_argument("--version", action="version", version=f"diffreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="register the built-in phantom from a perturbed start; write result and overlays")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    _add_engine_options(p)
    _add_physics_options(p)
    _add_registration_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("register", help="register a CT to an X-ray; write the pose and the result as JSON")
    p.add_argument("--ct", required=True, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom'")
    p.add_argument("--xray", required=True, help="X-ray: .npy, .png/.tif (16-bit), .nrrd/.nii.gz/.mha, or DICOM")
    p.add_argument("--geometry", default=None, help="detector geometry JSON (default: from the DICOM X-ray)")
    p.add_argument("--init", default=None, help="initial pose JSON (default: the DICOM C-arm angles about the CT centre)")
    p.add_argument("--truth", default=None, help="true pose JSON, to report mTRE and pose errors (optional)")
    p.add_argument("--out", required=True, help="result JSON: camera_from_world plus the result fields")
    p.add_argument("--overlay", default=None, help="PNG: DRR edges over the X-ray before and after (optional)")
    p.add_argument("--curve", default=None, help="PNG: similarity per iteration (optional)")
    p.add_argument("--drr", default=None, help="write the DRR at the registered pose (.npy, .nrrd, .nii.gz, .mha, .png)")
    p.add_argument("--trace", action="store_true", help="include the per-iteration trace in the result JSON")
    p.add_argument("--intensity", choices=["auto", "line_integral", "intensity"], default="auto",
                   help="X-ray values: line_integral (bone bright), intensity (raw, bone dark: -log applied), "
                        "auto (DICOM tags decide; other formats: line_integral)")
    p.add_argument("--crop", default="none", help="collimator crop: none, auto, or TOP,BOTTOM,LEFT,RIGHT pixels")
    p.add_argument("--flip-rows", action="store_true", help="the X-ray is mirrored top-bottom")
    p.add_argument("--flip-cols", action="store_true", help="the X-ray is mirrored left-right")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame X-ray (default 0)")
    _add_engine_options(p)
    _add_physics_options(p)
    _add_hu_options(p)
    _add_registration_options(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("experiment", help="the seed paper's experiments: similarity landscape, robustness to the start")
    p.add_argument("kind", choices=["landscape", "robustness", "polychromatic"],
                   help="polychromatic: a realistic simulated X-ray registered with mono- and polychromatic DRRs")
    p.add_argument("--out", required=True, help="output folder (CSV, Markdown, PNG)")
    p.add_argument("--ct", default=PHANTOM, help="CT file or 'phantom' (default)")
    p.add_argument("--xray", default=None, help="X-ray (default: a DRR of the CT at the true pose)")
    p.add_argument("--geometry", default=None, help="detector geometry JSON (default: the demo's 200x200 detector)")
    p.add_argument("--truth", default=None, help="true pose JSON (default: the demo's target pose)")
    p.add_argument("--similarities", nargs="+", default=["zncc"], help="similarities (robustness uses the first)")
    p.add_argument("--optimizers", nargs="+", default=["adam", "gddm", "gdm", "gd"], help="robustness: optimisers")
    p.add_argument("--n", type=int, default=100, help="robustness: random starts (default 100)")
    p.add_argument("--max-rot", type=float, default=None,
                   help="range of the rotation offsets, deg (default 45; polychromatic: 10)")
    p.add_argument("--max-trans", type=float, default=None,
                   help="range of the translation offsets, mm (default 60; polychromatic: 20)")
    p.add_argument("--points", type=int, default=41, help="landscape: samples per axis (default 41)")
    p.add_argument("--levels", type=float, nargs="+", default=[8.0, 4.0, 2.0],
                   help="robustness: pyramid levels (default 8 4 2: the full-size level is left out for speed)")
    p.add_argument("--iterations", type=int, default=150, help="robustness: iteration cap per level")
    p.add_argument("--batch", type=int, default=25, help="robustness: starts registered together (default 25)")
    p.add_argument("--seed", type=int, default=0, help="robustness: seed of the starts (default 0)")
    _add_engine_options(p)
    _add_physics_options(p)
    _add_hu_options(p)
    _add_realism_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("render", help="render one DRR of a CT at a pose")
    p.add_argument("--ct", required=True, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom'")
    p.add_argument("--geometry", required=True, help="detector geometry JSON (see README)")
    p.add_argument("--pose", required=True, help="pose JSON with camera_from_world (see README)")
    p.add_argument("--out", required=True, help="output: .npy, .nrrd, .nii.gz, .mha (float32) or .png (preview)")
    p.add_argument("--labels", default=None, help="label map on the CT grid (optional)")
    p.add_argument("--keep-labels", type=int, nargs="+", default=None, help="render only voxels with these labels")
    _add_engine_options(p)
    _add_physics_options(p)
    _add_hu_options(p)
    _add_realism_options(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("pose", help="write a pose JSON from clinical C-arm angles or the spherical C-arm model")
    p.add_argument("--ct", default=PHANTOM, help="CT whose grid centre is the default isocentre (default: phantom)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--clinical", type=float, nargs=2, metavar=("PRIMARY_DEG", "SECONDARY_DEG"),
                       help="LAO(+)/RAO(-) and CRA(+)/CAU(-) angles in degrees, as DICOM XA/RF store them")
    group.add_argument("--spherical", type=float, nargs=6, metavar=("THETA", "PHI", "GAMMA", "BX", "BY", "BZ"),
                       help="spherical C-arm model: angles in degrees, isocentre offset in mm")
    p.add_argument("--source-to-isocenter", type=float, default=None,
                   help="source-to-isocentre distance in mm (clinical: required; spherical: default SDD/2)")
    p.add_argument("--sdd", type=float, default=None, help="source-to-detector distance in mm (spherical model)")
    p.add_argument("--isocenter", type=float, nargs=3, default=None, metavar=("R", "A", "S"),
                   help="isocentre in RAS mm (default: the CT's grid centre)")
    p.add_argument("--out", required=True, help="pose JSON to write")
    p.set_defaults(func=cmd_pose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "pose":
            if args.clinical is not None and args.source_to_isocenter is None:
                raise InputError("--clinical needs --source-to-isocenter (DICOM DistanceSourceToPatient, mm)")
            if args.spherical is not None and args.sdd is None:
                raise InputError("--spherical needs --sdd (source-to-detector distance, mm)")
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"error: out of memory: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
