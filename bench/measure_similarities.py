"""Which similarity (and robust / nuisance setting) survives real X-rays: registrations on simulated degraded X-rays.

For each degradation preset of `DiffRegLogic.physics.xray_simulation`
(clean, scatter, noise, instruments, truncation, processing, all together)
the X-ray of the CT at a known pose is simulated, converted to the line
integral convention it was stored in (`xray.convention.apply_convention`),
and registered from ``--starts`` random starts within +-10 deg / +-20 mm
(seeded) with every similarity x variant (none, tukey, scatter,
tukey+scatter; `similarity.robust.configure_measure`). The CT the
registration gets is the simulation's model (truncated when the preset
says so). Prints a Markdown table: success rate (final mTRE < 2 mm), median
mTRE and median seconds per registration, per similarity and variant, and
the success rate per preset; writes every row as CSV (rows so far are kept
on Ctrl-C).

    python bench/measure_similarities.py --ct phantom --size 128 --starts 3
    python bench/measure_similarities.py --ct /tmp/ct/cxr.nii.gz --similarities zncc gradient_ncc
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed copy

from bench_render import load_ct  # noqa: E402

from DiffRegLogic import Detector, evaluation  # noqa: E402
from DiffRegLogic.geometry import spherical_carm_to_pose  # noqa: E402
from DiffRegLogic.physics.xray_simulation import preset, simulate_xray  # noqa: E402
from DiffRegLogic.registration import RegistrationOptions, perturb_pose, random_motions, register  # noqa: E402
from DiffRegLogic.similarity.measure import as_measure  # noqa: E402
from DiffRegLogic.similarity.robust import configure_measure  # noqa: E402
from DiffRegLogic.volume.ct import Volume  # noqa: E402
from DiffRegLogic.xray.convention import apply_convention  # noqa: E402

PRESETS = ("clean", "scatter", "noise", "instruments", "truncation", "processing", "all_moderate")
SIMILARITIES = ("zncc", "patch_zncc", "multiscale_zncc", "gradient_ncc", "mi")
VARIANTS = {"none": ("none", "none"), "tukey": ("tukey", "none"), "scatter": ("none", "scatter"),
            "tukey+scatter": ("tukey", "scatter")}
SUCCESS_MM = 2.0
COLUMNS = ("ct", "preset", "similarity", "variant", "start", "mtre_before_mm", "mtre_after_mm", "seconds",
           "iterations", "converged")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default="phantom", help="CT file or 'phantom'")
    parser.add_argument("--size", type=int, default=128, help="detector pixels per side")
    parser.add_argument("--field-mm", type=float, default=400.0, help="detector side, mm")
    parser.add_argument("--sdd", type=float, default=1020.0)
    parser.add_argument("--source-to-isocenter", type=float, default=600.0)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--similarities", nargs="+", default=list(SIMILARITIES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--levels", default="8 4 2 1")
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default="bench/results/similarities.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from DiffRegLogic.drr import fused_cpu

    fused_cpu.set_threads(args.threads)

    hu, affine, ct_name = load_ct(args.ct)
    hu_t, affine_t = torch.from_numpy(np.asarray(hu, dtype=np.float32)), torch.from_numpy(np.asarray(affine))
    full = Volume.from_hu(hu_t, affine_t)
    detector = Detector(args.size, args.size, args.sdd, (args.field_mm / args.size,) * 2)
    center = full.center.to(torch.float64)
    params = torch.tensor([np.deg2rad(8.0), np.deg2rad(-5.0), 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    target = spherical_carm_to_pose(params, args.sdd, center, radius=args.source_to_isocenter)
    starts = perturb_pose(target, random_motions(args.starts, 10.0, 20.0, args.seed), center)
    points = evaluation.target_points(full, 1000)
    levels = tuple(float(v) for v in args.levels.split())

    rows: list[dict] = []
    try:
        for name in args.presets:
            sim = simulate_xray(hu_t, affine_t, detector, target, preset(name, args.seed))
            mask = sim.collimation_mask
            xray = apply_convention(sim.image, sim.convention, None if mask is None else mask.numpy()).float()
            for similarity in args.similarities:
                for variant in args.variants:
                    robust, nuisance = VARIANTS[variant]
                    measure = configure_measure(as_measure(similarity), SimpleNamespace(robust=robust,
                                                                                         nuisance=nuisance))
                    options = RegistrationOptions(similarity=measure, backend=args.backend, levels=levels)
                    for index, start in enumerate(starts):
                        t0 = time.perf_counter()
                        result = register(sim.model, xray, detector, start, options, mask=mask)
                        seconds = time.perf_counter() - t0
                        row = {"ct": ct_name, "preset": name, "similarity": similarity, "variant": variant,
                               "start": index, "mtre_before_mm": float(evaluation.mtre(start, target, points)),
                               "mtre_after_mm": float(evaluation.mtre(result.pose.cpu(), target, points)),
                               "seconds": seconds, "iterations": result.iterations, "converged": result.converged}
                        rows.append(row)
                        print(f"  {name:12s} {similarity:15s} {variant:13s} start {index}: mTRE "
                              f"{row['mtre_before_mm']:.1f} -> {row['mtre_after_mm']:.2f} mm, {seconds:.1f} s",
                              file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: reporting the rows so far", file=sys.stderr)
    finally:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    print_table(rows, args)
    return 0


def print_table(rows: list[dict], args) -> None:
    presets = [p for p in args.presets if any(r["preset"] == p for r in rows)]
    print(f"\nCT {rows[0]['ct'] if rows else args.ct}, {args.size} px, levels {args.levels}, {args.starts} starts within "
          f"10 deg / 20 mm, success = mTRE < {SUCCESS_MM:g} mm, {args.threads} thread(s)\n")
    print("| similarity | variant | success | median mTRE (mm) | median s | " + " | ".join(presets) + " |")
    print("|---|---|---|---|---|" + "---|" * len(presets))
    for similarity in args.similarities:
        for variant in args.variants:
            mine = [r for r in rows if r["similarity"] == similarity and r["variant"] == variant]
            if not mine:
                continue
            ok = [r["mtre_after_mm"] < SUCCESS_MM for r in mine]
            per = []
            for p in presets:
                sub = [r["mtre_after_mm"] < SUCCESS_MM for r in mine if r["preset"] == p]
                per.append(f"{sum(sub)}/{len(sub)}" if sub else "-")
            print(f"| {similarity} | {variant} | {np.mean(ok):.0%} | {np.median([r['mtre_after_mm'] for r in mine]):.2f} "
                  f"| {np.median([r['seconds'] for r in mine]):.1f} | " + " | ".join(per) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
