"""Training benchmark: training-DRR throughput (ours vs DiffDRR / nanodrr), PoseNet step time, augmentation cost.

One process, one CT, the demo's detector (200 x 200, 3 mm pixels, SDD
1020 mm, source 600 mm from the CT centre, AP view) downsampled to each
``--image-size`` as the trainer does (`learning.data.training_detector`):

1. Training-DRR throughput: ``--poses`` motions drawn in the default
   `PoseRange` (+-45 deg, +-60 mm) rendered without gradients in chunks of
   ``--render-batch`` by `learning.data.DRRSource.render` (fused CPU kernels;
   Triton on CUDA), Siddon and trilinear, beside the peers' batched rendering
   of the same number of poses at the same detector size (DiffDRR's Siddon and
   trilinear, nanodrr's PyTorch and, on CUDA, Triton backends; skipped with a
   note when not installed). The peers get the same motions in their own pose
   parameters (ZXY Euler angles of the camera and its centre relative to the
   CT centre); their world axes differ from RAS by a fixed reorientation, so
   the views match in rotation and offset magnitudes, not pixel for pixel.
   That is enough for timing: the cost depends on the pose only through how
   much of each ray crosses the CT.
2. Training step: forward + backward + AdamW step of `learning.networks.PoseNet`
   (decoder and attention on) with the b0 and small backbones, batch
   ``--batch`` of network inputs of real DRRs, the trainer's loss
   (`learning.trainer.training_loss` with the trainer's defaults);
   median of ``--steps`` steps after ``--warmup`` steps.
3. Augmentation: `learning.augment.augment` with `DEFAULT_AUGMENTATION` per
   image, on a batch of the rendered DRRs, and `learning.data.network_input`.

Times are medians of ``--repeats`` calls after one warm-up (CUDA: synchronised
around each call). Prints Markdown tables and writes bench/results/training.json.

    python bench/bench_training.py                              # phantom, 128 px
    python bench/bench_training.py --ct /tmp/ct/cxr.nii.gz --image-size 64 128
    python bench/bench_training.py --image-size 64 --repeats 2  # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from bench_render import load_ct, timed  # noqa: E402

from DiffRegLogic import Volume  # noqa: E402
from DiffRegLogic.experiments.demo import DEMO_SOURCE_TO_ISOCENTER_MM, demo_detector  # noqa: E402
from DiffRegLogic.geometry.rigid import so3_exp  # noqa: E402
from DiffRegLogic.learning.augment import DEFAULT_AUGMENTATION, augment  # noqa: E402
from DiffRegLogic.learning.data import DRRSource, network_input  # noqa: E402
from DiffRegLogic.learning.trainer import TrainConfig, training_loss  # noqa: E402
from DiffRegLogic.learning.networks import PoseNet, PoseNetConfig, count_parameters  # noqa: E402
from DiffRegLogic.learning.poses import PoseRange, reference_view, sample_motions  # noqa: E402

BACKBONES = ("efficientnet-b0", "small")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matrix_to_zxy_degrees(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (n, 3, 3) -> (n, 3) angles (deg) (a, b, c) with R = Rz(a) Rx(b) Ry(c) (the peers' "ZXY")."""
    r = rotation.double()
    b = torch.asin(r[:, 2, 1].clamp(-1.0, 1.0))
    c = torch.atan2(-r[:, 2, 0], r[:, 2, 2])
    a = torch.atan2(-r[:, 0, 1], r[:, 1, 1])
    return torch.rad2deg(torch.stack([a, b, c], dim=1))


def peer_pose_parameters(motions: torch.Tensor, source_to_isocenter_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Motions (n, 6) of the CT -> the peers' camera parameters: ZXY Euler angles (n, 3) deg and camera centre (n, 3)
    mm relative to the CT centre. Moving the CT by (R, t) about its centre = moving the camera by the inverse,
    starting from the AP camera at (0, d, 0), rotation 0 (`peers` module docstring)."""
    rotation = so3_exp(motions[:, :3].double())
    inverse = rotation.transpose(1, 2)
    camera0 = torch.tensor([0.0, float(source_to_isocenter_mm), 0.0], dtype=torch.float64)
    centre = torch.einsum("nij,nj->ni", inverse, camera0 - motions[:, 3:].double())
    return matrix_to_zxy_degrees(inverse).float(), centre.float()


def throughput_rows(args, hu, affine, volume, size: int, device: str, motions: torch.Tensor,
                    available: dict) -> tuple[list[dict], dict]:
    """Rows {renderer, device, size, poses, seconds, drrs_per_s} for our DRRSource and the peers; also returns the
    siddon DRRs of ``motions`` (n, h, w) on ``device`` for the other sections."""
    detector = demo_detector()
    reference = reference_view(volume, detector, DEMO_SOURCE_TO_ISOCENTER_MM)
    rows, drrs = [], None
    for renderer in ("siddon", "trilinear"):
        source = DRRSource(volume, detector, reference, image_size=size, renderer=renderer, device=device,
                           render_batch=args.render_batch)
        seconds = timed(lambda: source.render(motions), args.repeats, device)
        backend = "fused" if device == "cpu" else "triton"
        rows.append({"renderer": f"DiffReg {renderer} ({backend})", "kind": renderer, "device": device, "size": size,
                     "shape": list(source.image_shape), "poses": len(motions), "seconds": seconds,
                     "drrs_per_s": len(motions) / seconds})
        if renderer == "siddon":
            drrs = source.render(motions)
        print(f"  {rows[-1]['renderer']:28s} {device} {size}px  {seconds:.3f} s / {len(motions)} DRRs", file=sys.stderr)
    rows_px, cols_px = source.image_shape
    spacing = float(source.render_detector.pixel_spacing[0])
    rotation, translation = peer_pose_parameters(motions, DEMO_SOURCE_TO_ISOCENTER_MM)
    rotation, translation = rotation.to(device), translation.to(device)
    for name, problem in available.items():
        if problem is not None:
            continue
        peer = peers.make_peer(name, hu, affine, rows_px, cols_px, detector.sdd, spacing,
                               DEMO_SOURCE_TO_ISOCENTER_MM, device, args.samples)
        # PeerRenderer._render takes (B, 3) poses and renders all B images in one call (it returns the first)
        render = peer._render

        def batched(render=render):
            with torch.no_grad():
                for start in range(0, len(motions), args.render_batch):
                    stop = start + args.render_batch
                    render(rotation[start:stop], translation[start:stop])

        try:
            seconds = timed(batched, args.repeats, device)
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            print(f"[skip] {name} at {size}px on {device}: out of memory ({str(exc).splitlines()[0][:100]})",
                  file=sys.stderr)
            continue
        rows.append({"renderer": name, "kind": "siddon" if "siddon" in name else "trilinear", "device": device,
                     "size": size, "shape": [rows_px, cols_px], "poses": len(motions), "seconds": seconds,
                     "drrs_per_s": len(motions) / seconds})
        print(f"  {name:28s} {device} {size}px  {seconds:.3f} s / {len(motions)} DRRs", file=sys.stderr)
    return rows, {"drrs": drrs}


def step_rows(args, size: int, device: str, drrs: torch.Tensor, motions: torch.Tensor) -> list[dict]:
    """Median forward + backward + AdamW step time of PoseNet per backbone at ``size``, batch ``args.batch``."""
    n = args.batch
    index = torch.arange(n) % drrs.shape[0]
    images = network_input(drrs[index.to(drrs.device)], size).to(device)
    true_rotation = so3_exp(motions[index, :3]).float().to(device)
    true_translation = motions[index, 3:].float().to(device)
    train_config = TrainConfig(steps=1)  # the trainer's loss settings (poster pose loss, its scale and weights)
    rows = []
    for backbone in BACKBONES:
        torch.manual_seed(0)
        config = PoseNetConfig(image_size=size, backbone=backbone, decoder=True, attention=True)
        model = PoseNet(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = training_loss(model(images), images, true_rotation, true_translation, train_config)[0]
            loss.backward()
            optimizer.step()
            return loss

        for _ in range(args.warmup):
            step()
        sync(device)
        times = []
        for _ in range(args.steps):
            sync(device)
            start = time.perf_counter()
            loss = step()
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"backbone": backbone, "device": device, "size": size, "batch": n,
                     "parameters": count_parameters(model), "step_s": seconds, "images_per_s": n / seconds,
                     "final_loss": float(loss.detach())})
        print(f"  PoseNet {backbone:16s} {device} {size}px batch {n}: {seconds:.3f} s/step", file=sys.stderr)
    return rows


def augmentation_rows(args, size: int, device: str, drrs: torch.Tensor) -> list[dict]:
    """Per-image time of augment(DEFAULT_AUGMENTATION) and of network_input on a batch of DRRs."""
    batch = drrs[torch.arange(args.batch, device=drrs.device) % drrs.shape[0]].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, fn in (("augment (DEFAULT_AUGMENTATION)", lambda: augment(batch, DEFAULT_AUGMENTATION, generator)),
                     ("network_input", lambda: network_input(batch, size))):
        seconds = timed(fn, args.repeats, device)
        rows.append({"operation": name, "device": device, "size": size, "shape": list(batch.shape[1:]),
                     "batch": len(batch), "seconds": seconds, "ms_per_image": 1e3 * seconds / len(batch)})
    return rows


def print_tables(ct_name: str, machine: str, args, throughput, steps, augmentation) -> None:
    print(f"\nCT: {ct_name}; demo detector 200 x 200, 3 mm, SDD 1020 mm, source {DEMO_SOURCE_TO_ISOCENTER_MM:g} mm "
          f"from the CT centre, AP, downsampled to the training size; poses in the default PoseRange; "
          f"peers' ray marchers {args.samples} samples/ray; {machine}\n")
    print("Training-DRR throughput (no gradients, chunks of "
          f"{args.render_batch} poses):\n")
    print("| renderer | device | size | poses | time (s) | DRRs/s | best peer / this* |")
    print("|---|---|---|---|---|---|---|")
    for row in throughput:
        same = [r for r in throughput if not r["renderer"].startswith("DiffReg") and r["kind"] == row["kind"]
                and r["size"] == row["size"] and r["device"] == row["device"]]
        ratio = "-"
        if row["renderer"].startswith("DiffReg") and same:
            row["ratio_best_peer"] = min(r["seconds"] for r in same) / row["seconds"]
            ratio = f"{row['ratio_best_peer']:.2f}"
        print(f"| {row['renderer']} | {row['device']} | {row['shape'][0]}x{row['shape'][1]} | {row['poses']} | "
              f"{row['seconds']:.3g} | {row['drrs_per_s']:.1f} | {ratio} |")
    print("\n*the fastest peer of the same kind (Siddon: DiffDRR's Siddon; trilinear: DiffDRR's and nanodrr's ray "
          "marchers) over our time, same device, size and run; > 1: we are faster.")
    print(f"\nTraining step (forward + backward + AdamW; decoder + attention on; median of {args.steps} after "
          f"{args.warmup} warm-up):\n")
    print("| backbone | device | size | batch | parameters | step (s) | images/s |")
    print("|---|---|---|---|---|---|---|")
    for row in steps:
        print(f"| {row['backbone']} | {row['device']} | {row['size']} | {row['batch']} | {row['parameters']:,} | "
              f"{row['step_s']:.3g} | {row['images_per_s']:.1f} |")
    print("\nAugmentation and network input, per image:\n")
    print("| operation | device | DRR size | batch | ms / image |")
    print("|---|---|---|---|---|")
    for row in augmentation:
        print(f"| {row['operation']} | {row['device']} | {row['shape'][0]}x{row['shape'][1]} | {row['batch']} | "
              f"{row['ms_per_image']:.3g} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default="phantom", help="'phantom', 'phantom-512' or a CT file (NIfTI, NRRD, ...)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[128],
                        help="training image sizes (px; multiples of 32)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (and augmentation batch)")
    parser.add_argument("--poses", type=int, default=64, help="DRRs per throughput measurement")
    parser.add_argument("--render-batch", type=int, default=32, help="poses per render call (DRRSource's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="training steps before timing")
    parser.add_argument("--samples", type=int, default=500, help="samples per ray of the peers' ray marchers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=None,
                        help="devices to time (default: cpu, and cuda when torch.cuda.is_available())")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--peer-devices", nargs="+", default=None,
                        help="devices the peers are timed on (default: all of --devices)")
    parser.add_argument("--json", default="bench/results/training.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from DiffRegLogic.drr import fused_cpu

    fused_cpu.set_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    peer_devices = devices if args.peer_devices is None else args.peer_devices

    hu, affine, ct_name = load_ct(args.ct)
    volume = Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine))
    ct_name = f"{ct_name} {tuple(hu.shape[::-1])} (I, J, K)"
    motions = sample_motions(args.poses, PoseRange(), torch.Generator().manual_seed(0))
    throughput, steps, augmentation, skipped = [], [], [], {}
    for device in devices:
        available = {} if args.skip_peers or device not in peer_devices else peers.available_peers(device)
        for name, problem in available.items():
            if problem is not None:
                skipped[f"{name} ({device})"] = problem
                print(f"[skip] {name} on {device}: {problem}", file=sys.stderr)
        for size in args.image_size:
            rows, extra = throughput_rows(args, hu, affine, volume, size, device, motions, available)
            throughput += rows
            steps += step_rows(args, size, device, extra["drrs"], motions)
            augmentation += augmentation_rows(args, size, device, extra["drrs"])

    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    if "cuda" in devices:
        machine += f", {torch.cuda.get_device_name()}"
    print_tables(ct_name, machine, args, throughput, steps, augmentation)
    if skipped:
        print("\nPeers skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ct": ct_name, "machine": machine, "devices": devices,
                                "options": {k: v for k, v in vars(args).items() if k != "json"},
                                "throughput": throughput, "training_step": steps, "augmentation": augmentation,
                                "skipped_peers": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
