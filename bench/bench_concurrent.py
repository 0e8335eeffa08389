"""Registrations side by side: one alone, then ``--jobs`` at once, with OpenMP's default wait policy and with DiffReg's.

torch and numba both use OpenMP; by default its idle threads spin before
they sleep, so processes sharing cores slow each other down far more than
their share. DiffReg sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment
sets it (see ``DiffRegLogic/__init__.py``). This prints the registration
time (``timings_s.registration`` of the result JSON) per run::

    python bench/bench_concurrent.py --jobs 2 --size 64

The case: the built-in phantom, a DRR at the demo's target pose as the X-ray,
the demo's start pose, default registration settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"OpenMP default (spin, then sleep)": {"OMP_WAIT_POLICY": ""},
            "passive (DiffReg's default)": {"OMP_WAIT_POLICY": "PASSIVE"},
            "short spin (GOMP_SPINCOUNT=10000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"}}


def make_case(folder: Path, size: int) -> list[str]:
    import torch

    from DiffRegLogic.drr.rendering import render
    from DiffRegLogic.experiments.demo import demo_detector, demo_poses
    from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict, write_json
    from DiffRegLogic.volume.phantoms import chest_phantom
    from DiffRegLogic.xray.files import write_image

    volume = chest_phantom()
    detector = demo_detector().downsample(200 / size)
    target, start = demo_poses(volume.center.to(torch.float64))
    with torch.no_grad():
        write_image(folder / "x.npy", render(volume, detector, target)[0])
    write_json(folder / "g.json", detector_to_dict(detector))
    write_json(folder / "start.json", pose_to_dict(start))
    return ["register", "--ct", "phantom", "--xray", str(folder / "x.npy"), "--geometry", str(folder / "g.json"),
            "--init", str(folder / "start.json"), "--quiet"]


def run_together(args: list[str], jobs: int, policy: dict, folder: Path) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **policy)
    outs = [folder / f"r{j}.json" for j in range(jobs)]
    procs = [subprocess.Popen([sys.executable, "-m", "DiffRegLogic.cli", *args, "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for out in outs]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a registration failed: {err}")
    return [json.loads(out.read_text())["timings_s"]["registration"] for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="registrations at once (default 2)")
    parser.add_argument("--size", type=int, default=64, help="detector side in pixels (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per setting (default 2)")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args = make_case(folder, a.size)
        print(f"{os.cpu_count()} cores; phantom, {a.size}x{a.size} detector; seconds of registration per run")
        print(f"| wait policy | alone | {a.jobs} at once (each) | slowdown |")
        print("|---|---|---|---|")
        for label, policy in POLICIES.items():
            alone, together = [], []
            for _ in range(a.repeats):
                alone += run_together(args, 1, policy, folder)
                together += run_together(args, a.jobs, policy, folder)
                time.sleep(0.5)
            m1, m2 = statistics.median(alone), statistics.median(together)
            print(f"| {label} | {m1:.2f} | {m2:.2f} | {m2 / m1:.1f}x |")


if __name__ == "__main__":
    main()
