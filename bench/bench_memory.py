"""Peak memory of one forward+backward DRR in a fresh process (Linux: VmHWM above the resident set).

    python bench/bench_memory.py siddon fused 1536      # renderer, backend, detector size
    python bench/bench_memory.py trilinear fused 1536 --ct phantom

The kernels are compiled on a 4 x 4 detector first, so compilation is not
counted; the CT is loaded before the baseline is taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render import _status_mb, load_ct  # noqa: E402

from DiffRegLogic import Detector, Volume, render  # noqa: E402
from DiffRegLogic.drr import fused_cpu  # noqa: E402
from DiffRegLogic.geometry import pose_from_se3_about, spherical_carm_to_pose  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("renderer", choices=["siddon", "trilinear"])
    parser.add_argument("backend", choices=["fused", "reference"])
    parser.add_argument("size", type=int)
    parser.add_argument("--ct", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fused_cpu.set_threads(args.threads)
    hu, affine, name = load_ct(args.ct)
    volume = Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine))
    del hu
    pose = spherical_carm_to_pose(torch.zeros(6, dtype=torch.float64), 1020.0, volume.center.double(), radius=600.0)

    def forward_backward(detector: Detector) -> None:
        xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        render(volume, detector, pose_from_se3_about(pose, xi, volume.center), args.renderer,
               backend=args.backend).sum().backward()

    forward_backward(Detector(4, 4, 1020.0, (100.0, 100.0)))  # compile
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        print("needs Linux (/proc/self/clear_refs)", file=sys.stderr)
        return 1
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    forward_backward(Detector(args.size, args.size, 1020.0, (400.0 / args.size, 400.0 / args.size)))
    seconds = time.perf_counter() - start
    print(f"{name}: {args.renderer} {args.backend} {args.size}x{args.size} forward+backward {seconds:.1f} s, peak "
          f"{_status_mb('VmHWM') - base:.0f} MB above the loaded CT ({volume.mu.numel() * 4 / 2**20:.0f} MB); "
          f"process peak {_status_mb('VmHWM'):.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
