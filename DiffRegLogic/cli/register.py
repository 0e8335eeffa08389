"""``diffreg register``: register a CT to one X-ray or several; write the pose and the result as JSON (and pictures).

``--xray`` may be repeated: several X-rays of one patient pose (biplane, or
C-arm shots) are registered together (`DiffRegLogic.registration.views`),
with ``--geometry`` and ``--init`` once per X-ray (or each X-ray's DICOM
geometry and angles): the relation between the views is that of their start
poses. ``--crop`` is given once (every X-ray) or once per X-ray; ``--truth``,
``--drr``, ``--overlay`` and ``--curve`` are view 1's. The result JSON keeps
the one-X-ray fields for view 1 and adds ``"views"``: per X-ray its file,
geometry, camera_from_world and image metrics.

An X-ray whose reader could not tell its intensity convention (``meta
["intensity_source"] == "default"``) is resolved against a coarse DRR at its
start pose (`DiffRegLogic.xray.convention.resolve_convention`); what was
found is in ``xray_meta["intensity_detected"]``.

The result JSON carries ``timings_s``, the wall-time breakdown of the run
(imports, reading the inputs, loading the renderer's kernels, the
registration, the outputs), measured from the command's entry.
"""

from __future__ import annotations

import argparse
import time

from ..errors import InputError
from .learned import add_learned_report, check_learned, learned_name, load_learned
from .options import PHANTOM, add_engine_options, add_hu_options, add_physics_options, add_registration_options


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("register", help="register a CT to an X-ray; write the pose and the result as JSON")
    p.add_argument("--ct", required=True, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom'")
    p.add_argument("--xray", required=True, action="append",
                   help="X-ray: .npy, .png/.tif (16-bit), .nrrd/.nii.gz/.mha, or DICOM; repeat it for several views "
                        "of one pose (biplane, two C-arm shots)")
    p.add_argument("--geometry", default=None, action="append",
                   help="detector geometry JSON, once per --xray (default: from each DICOM X-ray)")
    p.add_argument("--init", default=None, action="append",
                   help="initial pose JSON, once per --xray, all in the CT's world (default: each DICOM X-ray's "
                        "C-arm angles about the CT centre); the views' relation is that of their initial poses")
    p.add_argument("--model", default=None,
                   help="pose network from diffreg train (MODEL.pt): it predicts the start from the X-ray (no --init)")
    p.add_argument("--model-hypotheses", type=int, default=4,
                   help="network poses handed to the multi-start (its prediction plus test-time augmented ones; "
                        "default 4)")
    p.add_argument("--truth", default=None, help="true pose JSON of view 1, to report mTRE and pose errors (optional)")
    p.add_argument("--out", required=True, help="result JSON: camera_from_world plus the result fields")
    p.add_argument("--overlay", default=None, help="PNG: DRR edges over the X-ray before and after (optional)")
    p.add_argument("--curve", default=None, help="PNG: similarity per iteration (optional)")
    p.add_argument("--drr", default=None, help="write the DRR at the registered pose (.npy, .nrrd, .nii.gz, .mha, .png)")
    p.add_argument("--trace", action="store_true", help="include the per-iteration trace in the result JSON")
    from ..xray.intensity import INTENSITY_CONVENTIONS

    p.add_argument("--intensity", choices=list(INTENSITY_CONVENTIONS), default="auto",
                   help="X-ray values: line_integral (log, bone bright), inverted (log, bone dark), intensity (raw, "
                        "bone dark: -log applied), inverted_intensity (raw, bone bright), or auto: DICOM tags decide, "
                        "and where they are silent the convention is detected against a DRR at the start (the result "
                        "says what was found)")
    p.add_argument("--crop", default=None, action="append",
                   help="collimator crop: none, auto, or TOP,BOTTOM,LEFT,RIGHT pixels (default none); once for "
                        "every X-ray or once per --xray")
    p.add_argument("--flip-rows", action="store_true", help="the X-ray is mirrored top-bottom")
    p.add_argument("--flip-cols", action="store_true", help="the X-ray is mirrored left-right")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame X-ray (default 0)")
    add_engine_options(p)
    add_physics_options(p)
    add_hu_options(p)
    add_registration_options(p, learned=True)
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


def view_crops(args) -> list:
    """The crop of each X-ray (`parse_crop` of ``--crop``: none given = none; one = every X-ray; else one each)."""
    given = args.crop or ["none"]
    n = len(args.xray)
    if len(given) not in (1, n):
        raise InputError(f"{n} X-ray(s) (--xray) but {len(given)} --crop: give one crop for every X-ray or one per "
                         "X-ray, in the order of the --xray options")
    crops = [parse_crop(text) for text in given]
    return crops * n if len(crops) == 1 else crops


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
    view_crops(args)
    if args.ct != PHANTOM and not Path(args.ct).exists():
        raise InputError(f"CT file or folder not found: {args.ct}")
    n = len(args.xray)
    for option, what in (("geometry", "geometry file"), ("init", "initial pose")):
        given = getattr(args, option) or []
        if given and len(given) != n:
            raise InputError(f"{n} X-ray(s) (--xray) but {len(given)} --{option}: give one {what} per X-ray, in "
                             f"the order of the --xray options, or none (DICOM X-rays carry their own)")
    if args.model is not None:
        if not Path(args.model).is_file():
            raise InputError(f"model file not found: {args.model} (make one with diffreg train)")
        if args.init:
            raise InputError("--model predicts the start pose from the X-ray: leave out --init (or --model)")
        if n > 1:
            raise InputError("--model takes one X-ray: the network predicts one view's pose")
        if any(text != "none" for text in (args.crop or ["none"])):
            raise InputError("--model needs the whole X-ray on the detector it was trained for: leave out --crop")
        if not 1 <= args.model_hypotheses <= 64:
            raise InputError(f"--model-hypotheses must be from 1 to 64, got {args.model_hypotheses}")
    check_learned(args, n)
    for path in args.xray:
        if not Path(path).exists():
            raise InputError(f"X-ray file not found: {path}")
    for option, what in (("geometry", "geometry"), ("init", "pose"), ("truth", "pose")):
        paths = getattr(args, option)
        for path in paths if isinstance(paths, list) else [paths]:
            if path is not None and not Path(path).exists():
                raise InputError(f"{what} file not found: {path}")
    registration_options(args)  # every registration setting, checked before any work (torch-free)
    outputs = Outputs([args.ct, *args.xray, *(args.geometry or []), *(args.init or []), args.truth, args.model,
                       args.similarity_model])
    for option in ("out", "drr", "overlay", "curve"):
        outputs.file(getattr(args, option), f"--{option}")
    return outputs


def _read_view(args, k: int, crop):
    """X-ray k (an `XRay`) and its detector, from ``--xray``, ``--geometry`` and ``--crop``."""
    from ..geometry.files import read_geometry
    from ..xray.collimation import crop_detector, flip_detector
    from ..xray.image import check_xray
    from ..xray.readers import read_xray

    path = args.xray[k]
    xray = read_xray(path, intensity=args.intensity, frame=args.frame, flip_rows=args.flip_rows,
                     flip_cols=args.flip_cols, crop=crop)
    if args.geometry:
        detector = read_geometry(args.geometry[k])
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
            f"no geometry for {path}: give --geometry G.json (source_to_detector_mm, rows, cols, "
            "pixel_spacing_mm)" + (" once per --xray" if len(args.xray) > 1 else "")
            + ", or use a DICOM X-ray with DistanceSourceToDetector and ImagerPixelSpacing"
        )
    try:
        check_xray(xray.image, detector)
    except InputError as exc:
        raise (InputError(f"{_label(args, k)}: {exc}") if len(args.xray) > 1 else exc) from None
    _check_contrast(xray, _label(args, k))
    return xray, detector


def _label(args, k: int) -> str:
    return f"X-ray {k + 1} ({args.xray[k]})" if len(args.xray) > 1 else f"the X-ray {args.xray[k]}"


def _check_contrast(xray, label: str) -> None:
    """Refuse an X-ray without contrast where its mask weights it (an image of only air, a blank frame)."""
    from ..registration.checks import MIN_CONTRAST

    image = xray.image
    values = image if xray.mask is None else image[xray.mask > 0]
    if values.numel() == 0 or float(values.max() - values.min()) < MIN_CONTRAST:
        value = float(values.min()) if values.numel() else float("nan")
        raise InputError(f"{label} is constant ({value:.6g} everywhere it is used, e.g. only air or a blank frame): "
                         "no similarity can see structure in it; check the file (or its --frame and --crop)")


def _read_inputs(args, device):
    """X-rays, detectors, the CT volume, each view's start pose (4, 4), view 1's true pose and the pose network.

    With ``--model`` the start is the network's reference view until the
    network has seen the X-ray (its intensity convention resolved first).
    """
    from ..geometry.files import read_pose
    from ..registration.initializers import ClinicalAngles, FixedPose, initial_poses
    from .common import dtype_of, hu_conversion, load_ct, model

    views = [_read_view(args, k, crop) for k, crop in enumerate(view_crops(args))]
    ct = load_ct(args.ct, hu_conversion(args), dtype_of(args.dtype))
    volume = model(args, ct)[0].to(device)
    starts, network = [], None
    for k, (xray, detector) in enumerate(views):
        if args.model is not None:  # the network's reference view until the network has seen the X-ray
            from ..learning.inference import PoseNetworkInitializer

            network = PoseNetworkInitializer.from_file(args.model, ct, detector,  # trained on the plain CT
                                                       hypotheses=args.model_hypotheses, device=device)
            start = FixedPose(network.reference_pose)
        else:
            start = FixedPose(read_pose(args.init[k])) if args.init else ClinicalAngles.from_xray(xray)
        starts.append(initial_poses(start, xray, detector, volume)[0])
    truth = read_pose(args.truth) if args.truth is not None else None
    return [v[0] for v in views], [v[1] for v in views], volume, starts, truth, network


def _resolve_intensity(xray, detector, volume, pose, options):
    """The X-ray with its intensity convention resolved against a coarse DRR at ``pose``, when its reader had to
    guess (``meta["intensity_source"] == "default"``); otherwise the X-ray as it is."""
    from ..xray.convention import resolve_at_pose

    return resolve_at_pose(xray, detector, volume, pose, options.renderer, **options.render_options())


def _check_footprints(volume, xrays, detectors, starts, args) -> None:
    """Refuse a view whose start puts the CT's footprint on none of its X-ray (a truncated CT, a wrong pose)."""
    from ..drr.footprint import footprint_mask
    from ..registration.checks import check_start
    from ..registration.pyramid import resize_image

    for k, (xray, detector, pose) in enumerate(zip(xrays, detectors, starts)):
        # a CT behind the source or beyond the detector first, with the engine's own words
        check_start(volume, detector, pose, "the initial pose" + (f" of {_label(args, k)}" if len(xrays) > 1 else ""))
        coarse = detector.downsample(max(1.0, max(detector.shape) / 128.0))
        # with --footprint-mask the registration also leaves out rays through the CT's cut faces
        covered = footprint_mask(volume, coarse, pose, exclude_cut_faces=bool(args.footprint_mask))[0].cpu()
        if xray.mask is not None:
            covered = covered * (resize_image(xray.mask.to(covered.dtype).cpu(), coarse.shape) > 0)
        if not bool((covered > 0).any()):
            raise InputError(
                f"at its start pose the CT's footprint covers none of {_label(args, k)}: no ray through its pixels "
                "crosses the CT (a truncated CT, or the X-ray of another body part, or a wrong initial pose); check "
                "--init (or the DICOM angles, or the pose network of --model), --geometry and the CT"
            )


def run(args, outputs=None) -> int:
    t0 = time.perf_counter()
    from pathlib import Path

    import torch

    from .. import __version__
    from ..drr.rendering import render
    from ..figures import composites
    from ..geometry.files import detector_to_dict, write_json
    from ..registration.engine import register
    from ..learning.inference import network_start
    from ..learning.similarity_inference import register_learned
    from ..registration.initializers import FixedPose
    from ..registration.views import register_views, views_from_starts
    from ..similarity.metrics import image_metrics
    from ..xray.files import write_image
    from .common import device_of, load_kernels, loss_curve, network_report, pose_reports, progress_printer
    from .options import registration_options
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    timings = {"imports": time.perf_counter() - t0}
    out = Path(args.out)
    device = device_of(args)
    options = registration_options(args)
    t = time.perf_counter()
    xrays, detectors, volume, starts, truth, network = _read_inputs(args, device)
    _check_footprints(volume, xrays, detectors, starts, args)
    detected, hypotheses = [], None
    for k in range(len(xrays)):
        before = xrays[k].meta.get("intensity_source")
        if network is not None:  # the network's poses: hypothesis 0 is the start reported, all K the multi-start
            xrays[k], hypotheses = network_start(network, xrays[k], detectors[k], volume, options.renderer,
                                                 **options.render_options())
            starts[k] = hypotheses[0]
            _check_footprints(volume, xrays, detectors, starts, args)
        else:
            xrays[k] = _resolve_intensity(xrays[k], detectors[k], volume, starts[k], options)
        detected.append(None if before != "default" else
                        xrays[k].meta.get("intensity_detected", xrays[k].meta.get("intensity")))
        _check_contrast(xrays[k], _label(args, k))
    images = [x.image.to(device=device, dtype=volume.mu.dtype) for x in xrays]
    masks = [None if x.mask is None else x.mask.to(device) for x in xrays]
    timings["inputs"] = time.perf_counter() - t
    t = time.perf_counter()
    load_kernels(volume, detectors[0], starts[0], options)
    imports_done()  # numba and its kernels
    timings["kernels"] = time.perf_counter() - t
    names = " + ".join(str(x) for x in args.xray)
    sizes = ", ".join(f"{d.rows}x{d.cols}" for d in detectors)
    learned = load_learned(args, volume, detectors[0], device)
    measure_name = options.similarity_name if learned is None else learned_name(args)
    print(f"registering {args.ct} to {names} ({sizes}; {options.optimizer}, {measure_name}, "
          f"{options.renderer} on {device})", flush=True)
    t = time.perf_counter()
    start = starts[0] if hypotheses is None else FixedPose(hypotheses)
    if learned is not None:
        result = register_learned(volume, images[0], detectors[0], start, options, learned, polish=args.polish,
                                  polish_levels=tuple(args.polish_levels), mask=masks[0],
                                  callback=progress_printer(args.quiet))
        view_poses, relations = result.pose[None], [torch.eye(4, dtype=torch.float64)]
    elif len(xrays) == 1:
        result = register(volume, images[0], detectors[0], start, options, mask=masks[0],
                          callback=progress_printer(args.quiet))
        view_poses, relations = result.pose[None], [torch.eye(4, dtype=torch.float64)]
    else:
        views, first = views_from_starts(images, detectors, torch.stack(starts), masks,
                                         [_label(args, k) for k in range(len(xrays))])
        result = register_views(volume, views, first, options, callback=progress_printer(args.quiet))
        view_poses = result.view_poses
        relations = [torch.eye(4, dtype=torch.float64)] + [v.from_first for v in views[1:]]
    timings["registration"] = time.perf_counter() - t
    t = time.perf_counter()
    initials = starts  # each view's start as given (with --n-starts, not the random start the search chose)
    with torch.no_grad():  # the reported images use the renderer settings the registration used
        finals = [render(volume, det, torch.stack([start.to(torch.float64), pose]), options.renderer,
                         **options.render_options()) for det, start, pose in zip(detectors, initials, view_poses)]
    metrics = [(image_metrics(f[0], im, mk), image_metrics(f[1], im, mk)) for f, im, mk in zip(finals, images, masks)]
    report = result.to_dict()
    if not args.trace:
        report.pop("trace")
    metas = []
    for xray, found in zip(xrays, detected):
        meta = {k: v for k, v in xray.meta.items() if k in ("format", "intensity", "crop", "collimation", "notes")}
        if found is not None:
            meta["intensity_detected"] = found
        metas.append(meta)
    report.update({
        "diffreg_version": __version__,
        "ct": str(args.ct),
        "xray": str(args.xray[0]),
        "xray_meta": metas[0],
        "geometry": detector_to_dict(detectors[0]),
        "device": str(device),
        "image_metrics_initial": metrics[0][0],
        "image_metrics": metrics[0][1],
    })
    views_report = [{
        "xray": str(path), "xray_meta": meta, "geometry": detector_to_dict(det),
        "camera_from_world": pose.tolist(), "initial_camera_from_world": start.tolist(),
        "image_metrics_initial": m[0], "image_metrics": m[1],
    } for path, meta, det, pose, start, m in zip(args.xray, metas, detectors, view_poses, initials, metrics)]
    if truth is not None:
        report["error_initial"], report["error"] = pose_reports([starts[0], result.pose], truth, volume, detectors[0])
        for entry, det, rel, start, pose in zip(views_report, detectors, relations, initials, view_poses):
            entry["error_initial"], entry["error"] = pose_reports([start, pose], rel @ truth, volume, det)
    report["views"] = views_report
    if learned is not None:
        add_learned_report(report, args, learned, result)
    if network is not None:
        report["initial_camera_from_world"] = starts[0].tolist()  # the network's pose, as the issue asks
        report["network"] = network_report(args.model, network, hypotheses, truth, volume, detectors[0])
    # every output is written only now, after the registration succeeded, and moved into place together
    with outputs.staged() as stage:
        if args.drr is not None:
            write_image(stage.path(args.drr), finals[0][1], detectors[0])
        if args.overlay is not None:
            composites.save_png(stage.path(args.overlay), composites.before_after(
                images[0].cpu().numpy(), finals[0][0].cpu().numpy(), finals[0][1].cpu().numpy()))
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
    if network is not None:
        line += f"; start from the pose network ({network.last_seconds * 1000:.0f} ms, {len(hypotheses)} hypotheses)"
    if result.search:
        line += f"; wide search: {result.search.get('candidates')} candidate poses"
    detected = [x.meta.get("intensity_detected") for x in xrays if x.meta.get("intensity_detected")]
    if detected:
        line += "; intensity detected: " + ", ".join(detected)
    print(line)
    print(f"wrote {out}")
    return 0
