"""``diffreg render``: one DRR (or a realistic radiograph) of a CT at a pose."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .options import POLYCHROMATIC, add_engine_options, add_hu_options, add_physics_options, add_realism_options


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("render", help="render one DRR of a CT at a pose")
    p.add_argument("--ct", required=True, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom'")
    p.add_argument("--geometry", required=True, help="detector geometry JSON (see docs/formats.md)")
    p.add_argument("--pose", required=True, help="pose JSON with camera_from_world (see docs/formats.md)")
    p.add_argument("--out", required=True, help="output: .npy, .nrrd, .nii.gz, .mha (float32) or .png (preview)")
    p.add_argument("--labels", default=None, help="label map on the CT grid (optional)")
    p.add_argument("--keep-labels", type=int, nargs="+", default=None, help="render only voxels with these labels")
    add_engine_options(p)
    add_physics_options(p)
    add_hu_options(p)
    add_realism_options(p)
    p.set_defaults(func=run, check=check)
    return p


def check(args):
    """Argument and output-path errors found without reading any file; returns the checked `Outputs`."""
    from ..validation.outputs import Outputs
    from ..xray.files import check_image_suffix

    check_image_suffix(args.out)
    if args.implant and args.renderer != POLYCHROMATIC:
        raise InputError("--implant applies to --renderer polychromatic")
    outputs = Outputs([args.ct, args.labels, args.geometry, args.pose])
    outputs.file(args.out, "--out")
    return outputs


def run(args, outputs=None) -> int:
    import time
    from pathlib import Path

    import torch

    from ..drr.radiograph import simulate_radiograph
    from ..drr.rendering import render
    from ..geometry.files import read_geometry, read_pose
    from ..xray.files import write_image
    from .common import device_of, dtype_of, hu_conversion, load_ct, model, realism_of
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    device = device_of(args)
    detector = read_geometry(args.geometry)
    pose = read_pose(args.pose)
    out = Path(args.out)
    realism = realism_of(args)
    volume = load_ct(args.ct, hu_conversion(args), dtype_of(args.dtype), args.labels)
    volume, tracer = model(args, volume)
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
    if not bool(torch.isfinite(drr).all()):
        raise InputError("the DRR has NaN or infinite pixels: check the CT values, the geometry and the pose")
    with outputs.staged() as stage:
        write_image(stage.path(out), drr[0], detector)
    what = args.renderer if args.renderer != POLYCHROMATIC else f"polychromatic ({tracer}, {volume.beam.spectrum.name})"
    print(f"wrote {out} ({detector.rows}x{detector.cols}, {what} on {device}, {seconds:.2f} s; "
          f"range {float(drr.min()):.3g}..{float(drr.max()):.3g})")
    return 0
