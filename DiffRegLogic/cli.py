"""The ``diffreg`` command line tool: a thin layer over the engine.

    diffreg demo   --out DIR                      # the main job on the built-in phantom
    diffreg render --ct CT --geometry G.json --pose P.json --out OUT
    diffreg pose   --ct CT --clinical PRIMARY SECONDARY --source-to-isocenter 600 --out P.json

Errors in the input (missing files, bad JSON, wrong shapes, CUDA absent) print
one ``error: ...`` line that says what to fix and exit with status 2. Input
files are only read; outputs go to the paths given.
"""

from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--renderer", choices=sorted(RENDERERS), default="siddon", help="DRR renderer (default: siddon)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-memory-mb", type=float, default=DEFAULT_MAX_MEMORY_MB,
                   help=f"working-memory budget per detector tile (default {DEFAULT_MAX_MEMORY_MB:g})")
    p.add_argument("--step-voxels", type=float, default=1.0, help="trilinear step length in voxels (default 1)")


def _add_hu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mu-water", type=float, default=HUToMu.mu_water, help="mu of water, 1/mm (default %(default)s)")
    p.add_argument("--bone-hu", type=float, default=HUToMu.bone_hu, help="HU of the bone point (default %(default)s)")
    p.add_argument("--mu-bone", type=float, default=None, help="mu at the bone point, 1/mm (default 2 x mu-water)")


def _hu_to_mu(args) -> HUToMu:
    return HUToMu(mu_water=args.mu_water, bone_hu=args.bone_hu, mu_bone=args.mu_bone)


# --------------------------------------------------------------------------
# diffreg render
# --------------------------------------------------------------------------


def cmd_render(args) -> int:
    device = resolve_device(args.device)
    detector = io.read_geometry(args.geometry)
    pose = io.read_pose(args.pose)
    out = Path(args.out)
    io.check_image_suffix(out)
    volume = load_ct(args.ct, _hu_to_mu(args), _dtype(args.dtype), args.labels)
    if args.keep_labels:
        volume = volume.masked(args.keep_labels)
    volume = volume.to(device)
    start = time.perf_counter()
    with torch.no_grad():
        drr = render(volume, detector, pose, args.renderer, step_voxels=args.step_voxels,
                     max_memory_mb=args.max_memory_mb)
    seconds = time.perf_counter() - start
    io.write_image(out, drr[0], detector)
    print(f"wrote {out} ({detector.rows}x{detector.cols}, {args.renderer} on {device}, {seconds:.2f} s; "
          f"DRR range {float(drr.min()):.3g}..{float(drr.max()):.3g})")
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


def cmd_demo(args) -> int:
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .phantoms import chest_phantom

    t0 = time.perf_counter()
    volume = chest_phantom(dtype=_dtype(args.dtype)).to(device)
    t_phantom = time.perf_counter() - t0
    detector = Detector(**DEMO_DETECTOR)
    center = volume.center.cpu()
    target, start = demo_poses(center)
    t0 = time.perf_counter()
    with torch.no_grad():
        drrs = render(volume, detector, torch.stack([target, start]), args.renderer,
                      max_memory_mb=args.max_memory_mb)
    t_render = time.perf_counter() - t0
    fixed, moving = drrs[0].cpu().numpy(), drrs[1].cpu().numpy()
    io.write_image(out / "target.npy", fixed)
    io.write_image(out / "target.png", fixed)
    io.write_image(out / "start.png", moving)
    _write_png(out / "overlay.png", overlay_rgb(fixed, moving))
    io.write_json(out / "geometry.json", io.detector_to_dict(detector))
    io.write_json(out / "target_pose.json", io.pose_to_dict(target))
    io.write_json(out / "start_pose.json", io.pose_to_dict(start))
    zncc = float(np.corrcoef(fixed.ravel(), moving.ravel())[0, 1])
    result = {
        "diffreg_version": __version__,
        "ct": "built-in chest phantom (DiffRegLogic.phantoms.chest_phantom)",
        "renderer": args.renderer,
        "device": str(device),
        "geometry": io.detector_to_dict(detector),
        "target_camera_from_world": target.tolist(),
        "start_camera_from_world": start.tolist(),
        "start_error": pose_difference(target, start, center),
        "start_zncc": zncc,
        "registered": False,
        "registration": "not run: gradient-based registration is not part of this version yet; "
                        "the demo renders the target and the perturbed start and shows their overlay",
        "seconds": {"phantom": round(t_phantom, 3), "render_2_drrs": round(t_render, 3)},
        "files": ["target.png", "start.png", "overlay.png", "target.npy", "geometry.json",
                  "target_pose.json", "start_pose.json", "result.json"],
    }
    io.write_json(out / "result.json", result)
    err = result["start_error"]
    print(f"rendered target and start DRRs of the phantom ({detector.rows}x{detector.cols}, {args.renderer} on "
          f"{device}, {t_render:.2f} s); start is {err['rotation_deg']:.1f} deg / {err['translation_mm']:.1f} mm "
          f"from the target, ZNCC {zncc:.3f}")
    print(f"wrote {out}/result.json, {out}/overlay.png (target magenta, start green)")
    return 0


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffreg", description="Differentiable DRRs and 2D/3D CT-to-X-ray registration.")
    parser.add_argument("--version", action="version", version=f"diffreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the built-in phantom and write an overlay")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    _add_engine_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("render", help="render one DRR of a CT at a pose")
    p.add_argument("--ct", required=True, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom'")
    p.add_argument("--geometry", required=True, help="detector geometry JSON (see README)")
    p.add_argument("--pose", required=True, help="pose JSON with camera_from_world (see README)")
    p.add_argument("--out", required=True, help="output: .npy, .nrrd, .nii.gz, .mha (float32) or .png (preview)")
    p.add_argument("--labels", default=None, help="label map on the CT grid (optional)")
    p.add_argument("--keep-labels", type=int, nargs="+", default=None, help="render only voxels with these labels")
    _add_engine_options(p)
    _add_hu_options(p)
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
