"""``diffreg pose``: a pose JSON from clinical C-arm angles or the spherical C-arm model."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .options import PHANTOM


def add_parser(sub) -> argparse.ArgumentParser:
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
    p.set_defaults(func=run, check=check)
    return p


def check(args):
    """Every number and the output path, before the CT is read; returns the checked `Outputs`."""
    from pathlib import Path

    from ..limits import MAX_TRANSLATION_MM, SDD_RANGE_MM, check_number
    from ..validation.outputs import Outputs

    if args.clinical is not None and args.source_to_isocenter is None:
        raise InputError("--clinical needs --source-to-isocenter (DICOM DistanceSourceToPatient, mm)")
    if args.spherical is not None and args.sdd is None:
        raise InputError("--spherical needs --sdd (source-to-detector distance, mm)")
    if args.clinical is not None:
        for name, value in zip(("PRIMARY_DEG", "SECONDARY_DEG"), args.clinical):
            check_number(f"--clinical {name}", value, -360.0, 360.0, unit="deg")
    if args.spherical is not None:
        for name, value in zip(("THETA", "PHI", "GAMMA"), args.spherical[:3]):
            check_number(f"--spherical {name}", value, -360.0, 360.0, unit="deg")
        for name, value in zip(("BX", "BY", "BZ"), args.spherical[3:]):
            check_number(f"--spherical {name}", value, -MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, unit="mm")
    if args.sdd is not None:
        check_number("--sdd", args.sdd, *SDD_RANGE_MM, unit="mm")
    if args.source_to_isocenter is not None:
        check_number("--source-to-isocenter", args.source_to_isocenter, 0.0, SDD_RANGE_MM[1], low_open=True,
                     unit="mm")
        if args.sdd is not None and args.source_to_isocenter >= args.sdd:
            raise InputError(f"--source-to-isocenter ({args.source_to_isocenter:g} mm) must be less than --sdd "
                             f"({args.sdd:g} mm): the isocentre lies between the source and the detector")
    for value in args.isocenter or ():
        check_number("--isocenter", value, -MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, unit="mm")
    if Path(args.out).suffix.lower() != ".json":
        raise InputError(f"--out must be a .json file for the pose, got {args.out}")
    outputs = Outputs([args.ct])
    outputs.file(args.out, "--out")
    return outputs


def run(args, outputs=None) -> int:
    import numpy as np
    import torch

    from ..geometry.carm import clinical_to_pose, spherical_carm_to_pose
    from ..geometry.files import pose_to_dict, write_json
    from ..volume.hu import HUToMu
    from .common import load_ct
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    center = load_ct(args.ct, HUToMu(), torch.float32).center
    isocenter = torch.as_tensor(args.isocenter, dtype=torch.float64) if args.isocenter else center
    if args.clinical is not None:
        primary, secondary = args.clinical
        pose = clinical_to_pose(primary, secondary, args.source_to_isocenter, isocenter)
        described = {"clinical": {"primary_deg": primary, "secondary_deg": secondary,
                                  "source_to_isocenter_mm": args.source_to_isocenter}}
    else:
        theta, phi, gamma, bx, by, bz = args.spherical
        params = torch.tensor([np.deg2rad(theta), np.deg2rad(phi), np.deg2rad(gamma), bx, by, bz], dtype=torch.float64)
        pose = spherical_carm_to_pose(params, args.sdd, center, radius=args.source_to_isocenter)
        described = {"spherical": {"theta_deg": theta, "phi_deg": phi, "gamma_deg": gamma,
                                   "b_mm": [bx, by, bz], "radius_mm": args.source_to_isocenter or args.sdd / 2}}
    data = pose_to_dict(pose)
    data["isocenter_ras_mm"] = isocenter.tolist()
    data.update(described)
    with outputs.staged() as stage:
        write_json(stage.path(args.out), data)
    print(f"wrote {args.out}")
    return 0
