"""Measure how much a second view lowers the error along the beam (docs/multiview.md has the table).

For a CT (the phantom or a CT file), a target pose (the demo's AP view) and
a second view turned by SEPARATION degrees about the CT centre, render both
X-rays (DRRs plus seeded Gaussian noise of NOISE x their standard
deviation), draw N seeded starts within +-10 deg / +-20 mm, and register
from each: view 1 alone, view 2 alone, both (`register_views`). Reports per
setting the median over starts of the depth error (the CT centre's error
along view 1's beam, camera z), the 3D centre error, the mTRE, and seconds
per registration. Rows are appended to the CSV as they finish (an
interrupted run keeps them).

    python bench/measure_multiview.py --ct phantom --px 128 --starts 10 --separation 90 40 \
        --csv /tmp/multiview.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed copy

from DiffRegLogic import evaluation  # noqa: E402
from DiffRegLogic.cli.common import load_ct
from DiffRegLogic.drr import render
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.motions import orbit_pose, perturb_pose, random_motions  # noqa: E402
from DiffRegLogic.registration import View, camera_error_mm, make_options, register, register_views
from DiffRegLogic.volume.hu import HUToMu

FIELDS = ["ct", "separation_deg", "start", "mode", "depth_error_mm", "own_depth_error_mm", "center_error_mm",
          "mtre_mm", "seconds"]


def measure(ct: str, separation: float, px: int, n_starts: int, noise: float, seed: int, writer, levels) -> list[dict]:
    volume = load_ct(ct, HUToMu(), torch.float32)
    center = volume.center.to(torch.float64)
    target, _ = demo_poses(center)
    second = orbit_pose(target, center, separation)
    relation = second @ torch.linalg.inv(target)
    back = torch.linalg.inv(relation)
    detector = Detector(rows=px, cols=px, sdd=1020.0, pixel_spacing=(600.0 / px, 600.0 / px))
    g = torch.Generator().manual_seed(seed)
    xrays = []
    for pose in (target, second):
        clean = render(volume, detector, pose)[0]
        xrays.append(clean + noise * clean.std() * torch.randn(clean.shape, generator=g, dtype=clean.dtype))
    points = evaluation.target_points(volume, 500)
    starts = perturb_pose(target, random_motions(n_starts, 10.0, 20.0, seed + 1), center)
    opts = make_options(levels=levels)
    # view 2's beam direction in view 1's camera axes: its depth error is the error along it
    beam_2 = (target[:3, :3] @ second[:3, :3].T @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    rows = []
    for i, start in enumerate(starts):
        runs = {
            "view 1": lambda s=start: register(volume, xrays[0], detector, s, opts).pose,
            "view 2": lambda s=start: back @ register(volume, xrays[1], detector, relation @ s, opts).pose,
            "both": lambda s=start: register_views(volume, [View(xrays[0], detector),
                                                             View(xrays[1], detector, from_first=relation)],
                                                    s, opts).pose,
        }
        for mode, run in runs.items():
            t = time.perf_counter()
            pose = run()
            seconds = time.perf_counter() - t
            error = camera_error_mm(pose, target, center)
            own = abs(float(error @ beam_2)) if mode == "view 2" else abs(float(error[2]))
            row = {"ct": Path(ct).name, "separation_deg": separation, "start": i, "mode": mode,
                   "depth_error_mm": abs(float(error[2])), "own_depth_error_mm": own,
                   "center_error_mm": float(error.norm()),
                   "mtre_mm": float(evaluation.mtre(pose, target, points)), "seconds": seconds}
            writer.writerow(row)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per (CT, separation, mode), medians over the starts."""
    out = ["| CT | views apart | registered on | depth error (view 1 beam) mm | own-beam depth mm | "
           "centre error mm | mTRE mm | s / registration |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        key = (r["ct"], r["separation_deg"], r["mode"])
        if key not in keys:
            keys.append(key)
    for ct, sep, mode in keys:
        sel = [r for r in rows if (r["ct"], r["separation_deg"], r["mode"]) == (ct, sep, mode)]
        med = {f: statistics.median(float(r[f]) for r in sel) for f in FIELDS[4:]}
        out.append(f"| {ct} | {sep:g} deg | {mode} | {med['depth_error_mm']:.2f} | {med['own_depth_error_mm']:.2f} | "
                   f"{med['center_error_mm']:.2f} | {med['mtre_mm']:.2f} | {med['seconds']:.1f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", nargs="+", default=["phantom"])
    p.add_argument("--separation", type=float, nargs="+", default=[90.0, 40.0])
    p.add_argument("--px", type=int, default=128)
    p.add_argument("--starts", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.5, help="Gaussian noise, x the DRR's standard deviation")
    p.add_argument("--levels", type=float, nargs="+", default=[4.0, 2.0, 1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", default="multiview.csv")
    args = p.parse_args()
    rows = []
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        try:
            for ct in args.ct:
                for separation in args.separation:
                    rows += measure(ct, separation, args.px, args.starts, args.noise, args.seed, writer,
                                    tuple(args.levels))
                    handle.flush()
        except KeyboardInterrupt:
            print("interrupted: the rows so far are kept")
    print(table(rows))


if __name__ == "__main__":
    main()
