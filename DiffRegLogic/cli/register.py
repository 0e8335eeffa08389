"""``diffreg register``: register a CT to an X-ray; write the pose and the result as JSON (and pictures).

The result JSON carries ``timings_s``, the wall-time breakdown of the run
(imports, reading the inputs, loading the renderer's kernels, the
registration, the outputs), measured from the command's entry.
"""

from __future__ import annotations

import argparse
import time

from ..errors import InputError
from .options import PHANTOM, add_engine_options, add_hu_options, add_physics_options, add_registration_options


def add_parser(sub) -> argparse.ArgumentParser:
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
    add_engine_options(p)
    add_physics_options(p)
    add_hu_options(p)
    add_registration_options(p)
    p.set_defaults(func=run, check=check)
    return p


def parse_crop(text: str):
    """``"none"``, ``"auto"`` or (top, bottom, left, right) pixels from ``--crop``."""
    if text in ("none", "auto"):
        return text
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 4 or not all(part.isdecimal() for part in parts):  # isdigit() takes '²', which int() refuses
        raise InputError(f"--crop takes none, auto or TOP,BOTTOM,LEFT,RIGHT (four whole numbers of pixels), "
                         f"got {text!r}")
    return tuple(int(part) for part in parts)


def check(args):
    """Argument and path errors found before any heavy import or file read; returns the checked `Outputs`."""
    from pathlib import Path

    from ..validation.outputs import Outputs
    from ..xray.files import check_image_suffix
    from .options import registration_options

    if Path(args.out).suffix.lower() != ".json":
        raise InputError(f"--out must be a .json file for the result, got {args.out}")
    for option in ("overlay", "curve"):
        path = getattr(args, option)
        if path is not None and not str(path).lower().endswith(".png"):
            raise InputError(f"--{option} must be a .png file, got {path}")
    if args.drr is not None:
        check_image_suffix(args.drr)
    parse_crop(args.crop)
    if args.ct != PHANTOM and not Path(args.ct).exists():
        raise InputError(f"CT file or folder not found: {args.ct}")
    if not Path(args.xray).exists():
        raise InputError(f"X-ray file not found: {args.xray}")
    for option, what in (("geometry", "geometry"), ("init", "pose"), ("truth", "pose")):
        path = getattr(args, option)
        if path is not None and not Path(path).exists():
            raise InputError(f"{what} file not found: {path}")
    registration_options(args)  # every registration setting, checked before any work (torch-free)
    outputs = Outputs([args.ct, args.xray, args.geometry, args.init, args.truth])
    for option in ("out", "drr", "overlay", "curve"):
        outputs.file(getattr(args, option), f"--{option}")
    return outputs


def _read_inputs(args, device):
    """X-ray, detector, CT volume, start (an initialiser) and true pose from the command line."""
    from ..geometry.files import read_geometry, read_pose
    from ..registration.initializers import ClinicalAngles, FixedPose
    from ..xray.collimation import crop_detector, flip_detector
    from ..xray.image import check_xray
    from ..xray.readers import read_xray
    from .common import dtype_of, hu_conversion, load_ct, model

    xray = read_xray(args.xray, intensity=args.intensity, frame=args.frame, flip_rows=args.flip_rows,
                     flip_cols=args.flip_cols, crop=parse_crop(args.crop))
    if args.geometry is not None:
        detector = read_geometry(args.geometry)
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
    volume = model(args, load_ct(args.ct, hu_conversion(args), dtype_of(args.dtype)))[0].to(device)
    start = FixedPose(read_pose(args.init)) if args.init is not None else ClinicalAngles.from_xray(xray)
    truth = read_pose(args.truth) if args.truth is not None else None
    return xray, detector, volume, start, truth


def run(args, outputs=None) -> int:
    t0 = time.perf_counter()
    from pathlib import Path

    import torch

    from .. import __version__
    from ..drr.rendering import render
    from ..figures import composites
    from ..geometry.files import detector_to_dict, write_json
    from ..registration.engine import register
    from ..registration.initializers import initial_poses
    from ..similarity.metrics import image_metrics
    from ..xray.files import write_image
    from .common import device_of, loss_curve, pose_reports, progress_printer
    from .options import registration_options
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    timings = {"imports": time.perf_counter() - t0}
    out = Path(args.out)
    device = device_of(args)
    options = registration_options(args)
    t = time.perf_counter()
    xray, detector, volume, start, truth = _read_inputs(args, device)
    image = xray.image.to(device=device, dtype=volume.mu.dtype)
    mask = None if xray.mask is None else xray.mask.to(device)
    initial = initial_poses(start, xray, detector, volume)[0]
    timings["inputs"] = time.perf_counter() - t
    t = time.perf_counter()
    _load_kernels(volume, detector, initial, options)
    imports_done()  # numba and its kernels
    timings["kernels"] = time.perf_counter() - t
    print(f"registering {args.ct} to {args.xray} ({detector.rows}x{detector.cols}; {options.optimizer}, "
          f"{options.similarity_name}, {options.renderer} on {device})", flush=True)
    t = time.perf_counter()
    result = register(volume, image, detector, initial, options, mask=mask, callback=progress_printer(args.quiet))
    timings["registration"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():  # the reported images use the renderer settings the registration used
        final = render(volume, detector, torch.stack([initial.to(torch.float64), result.pose]), options.renderer,
                       **options.render_options())
    report = result.to_dict()
    if not args.trace:
        report.pop("trace")
    report.update({
        "diffreg_version": __version__,
        "ct": str(args.ct),
        "xray": str(args.xray),
        "xray_meta": {k: v for k, v in xray.meta.items() if k in ("format", "intensity", "crop", "collimation", "notes")},
        "geometry": detector_to_dict(detector),
        "device": str(device),
        "image_metrics_initial": image_metrics(final[0], image, mask),
        "image_metrics": image_metrics(final[1], image, mask),
    })
    if truth is not None:
        report["error_initial"], report["error"] = pose_reports([initial, result.pose], truth, volume, detector)
    # every output is written only now, after the registration succeeded, and moved into place together
    with outputs.staged() as stage:
        if args.drr is not None:
            write_image(stage.path(args.drr), final[1], detector)
        if args.overlay is not None:
            composites.save_png(stage.path(args.overlay), composites.before_after(
                image.cpu().numpy(), final[0].cpu().numpy(), final[1].cpu().numpy()))
        if args.curve is not None:
            composites.save_png(stage.path(args.curve), loss_curve(result))
        timings["outputs"] = time.perf_counter() - t
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        write_json(stage.path(out), report)
    state = "converged" if result.converged else f"did NOT converge ({result.stop_reason})"
    line = (f"registration {state}: similarity {result.initial_similarity:.4f} -> {result.similarity:.4f}, "
            f"{result.iterations} iterations, {result.seconds:.1f} s")
    if truth is not None:
        line += f"; mTRE {report['error_initial']['mtre_mm']:.2f} -> {report['error']['mtre_mm']:.2f} mm"
    print(line)
    print(f"wrote {out}")
    return 0


def _load_kernels(volume, detector, pose, options) -> None:
    """Render 2 x 2 pixels once with and without gradients, so compiled kernels are loaded before the clock starts."""
    import torch

    from ..drr.rendering import render

    tiny = detector.downsample(max(detector.shape) / 2.0)
    p = pose.to(torch.float64).clone().requires_grad_(True)
    drr = render(volume, tiny, p, options.renderer, **options.render_options())
    drr.sum().backward()
    with torch.no_grad():  # the forward-only kernel (final scores, reported images) is a kernel of its own
        render(volume, tiny, p.detach(), options.renderer, **options.render_options())
