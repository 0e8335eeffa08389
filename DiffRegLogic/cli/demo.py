"""``diffreg demo``: the main job on the built-in phantom (render, register, write the result and pictures)."""

from __future__ import annotations

import argparse

from .options import add_engine_options, add_physics_options, add_registration_options

FILES = ["result.json", "before_after.png", "checkerboard.png", "loss_curve.png", "overlay.png", "target.png",
         "start.png", "registered.png", "target.npy", "geometry.json", "target_pose.json", "start_pose.json",
         "registered_pose.json"]
"""What ``diffreg demo`` writes into its folder."""
AUTO_FILES = FILES + ["model.pt"]
"""What ``diffreg demo --auto`` writes: the same, plus the pose network it trained."""
AUTO_MINUTES = 2.0
"""``--auto``: minutes of training of the small pose network on the phantom (about two on a laptop CPU)."""
AUTO_RANGE = (20.0, 30.0)
"""``--auto``: the training poses' range (deg, mm) about the demo's AP view (its target is 9 deg from it)."""
AUTO_IMAGE_SIZE = 64


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="register the built-in phantom from a perturbed start; write result and overlays")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--auto", action="store_true",
                   help="no start pose: train a small pose network on the phantom's DRRs first (about two minutes "
                        "on a laptop CPU), then register from its prediction; writes model.pt too")
    p.add_argument("--train-minutes", type=float, default=AUTO_MINUTES,
                   help=f"--auto: training budget in minutes (default {AUTO_MINUTES:g})")
    add_engine_options(p)
    add_physics_options(p)
    add_registration_options(p)
    p.set_defaults(func=run, check=check)
    return p


def check(args):
    """The registration settings and the output folder, before any work; returns the checked `Outputs`."""
    from ..validation.outputs import Outputs
    from .options import registration_options

    registration_options(args)
    if not (0 < args.train_minutes < 1e5):
        from ..errors import InputError

        raise InputError(f"--train-minutes must be a positive number of minutes, got {args.train_minutes:g}")
    outputs = Outputs()
    outputs.folder(args.out, "--out", AUTO_FILES if args.auto else FILES)
    return outputs


def train_demo_network(args, volume, detector, center, tracer):
    """``--auto``: a small pose network trained on the phantom about the demo's AP view.

    Returns (the initialiser, (the model file's bytes, training seconds)).
    """
    import tempfile
    import time
    from dataclasses import replace

    from ..experiments.demo import DEMO_SOURCE_TO_ISOCENTER_MM
    from ..learning.inference import PoseNetworkInitializer
    from ..learning.networks import PoseNetConfig
    from ..learning.poses import PoseRange, reference_view
    from ..learning.trainer import TrainConfig, train

    reference = reference_view(volume, detector, DEMO_SOURCE_TO_ISOCENTER_MM)
    rot, trans = AUTO_RANGE
    config = TrainConfig(network=PoseNetConfig(image_size=AUTO_IMAGE_SIZE, backbone="small",
                                               max_translation_mm=(trans,) * 3),
                         pose_range=PoseRange((rot,) * 3, (trans,) * 3), minutes=args.train_minutes,
                         seed=args.seed, renderer=tracer)
    config = replace(config, device=str(volume.mu.device))
    print(f"training a small pose network on the phantom's DRRs ({args.train_minutes:g} min, {AUTO_IMAGE_SIZE} px, "
          f"+-{rot:g} deg / +-{trans:g} mm about the AP view)", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffreg-demo-") as folder:  # the model joins the outputs at the end
        path = f"{folder}/model.pt"
        train(volume, detector, reference, config, checkpoint_path=path, bar=not args.quiet)
        seconds = time.perf_counter() - t0
        network = PoseNetworkInitializer.from_file(path, volume, detector, device=volume.mu.device)
        with open(path, "rb") as f:
            data = f.read()
    return network, (data, seconds)


def run(args, outputs=None) -> int:
    import time
    from pathlib import Path

    import torch

    from .. import __version__
    from ..drr.rendering import render
    from ..experiments.demo import demo_detector, demo_poses
    from ..figures import composites
    from ..geometry.files import detector_to_dict, pose_to_dict, write_json
    from ..geometry.motions import pose_difference
    from ..registration.engine import register
    from ..registration.initializers import FixedPose
    from ..similarity.metrics import image_metrics
    from ..volume.phantoms import chest_phantom
    from ..xray.files import write_image
    from .common import device_of, dtype_of, loss_curve, model, pose_reports, progress_printer, write_png
    from .options import registration_options
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    device = device_of(args)
    options = registration_options(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    volume, tracer = model(args, chest_phantom(dtype=dtype_of(args.dtype)))
    volume = volume.to(device)
    t_phantom = time.perf_counter() - t0
    detector = demo_detector()
    center = volume.center.cpu().to(torch.float64)
    target, start = demo_poses(center)
    network = None
    if args.auto:
        with torch.no_grad():
            xray = render(volume, detector, target, tracer, **options.render_options())[0]
        network, model_file = train_demo_network(args, volume, detector, center, tracer)
        hypotheses = network(xray, detector, volume)
        start = hypotheses[0]
    with torch.no_grad():
        drrs = render(volume, detector, torch.stack([target, start]), tracer, **options.render_options())
    xray, moving = drrs[0], drrs[1]
    imports_done()  # the first render loaded numba and its kernels
    offset = pose_difference(target, start, center)
    print(f"X-ray: a DRR of the phantom at the target pose ({detector.rows}x{detector.cols}); start "
          f"{offset['rotation_deg']:.1f} deg / {offset['translation_mm']:.1f} mm away; registering "
          f"({args.optimizer}, {args.similarity}, {args.renderer} on {device})", flush=True)
    result = register(volume, xray, detector, start if network is None else FixedPose(hypotheses), options,
                      callback=progress_printer(args.quiet))
    with torch.no_grad():
        final = render(volume, detector, result.pose, tracer, **options.render_options())[0]
    fixed, before, after = xray.cpu().numpy(), moving.cpu().numpy(), final.cpu().numpy()
    before_err, after_err = pose_reports([start, result.pose], target, volume, detector)
    summary = {
        "diffreg_version": __version__,
        "ct": "built-in chest phantom (DiffRegLogic.volume.phantoms.chest_phantom)",
        "xray": "DRR of the phantom at target_pose.json",
        "device": str(device),
        "geometry": detector_to_dict(detector),
        "registered": True,
        "target_camera_from_world": target.tolist(),
        "start_camera_from_world": start.tolist(),
        "error_before": before_err,
        "error_after": after_err,
        "image_metrics_before": image_metrics(drrs[1], xray),
        "image_metrics_after": image_metrics(final, xray),
        "seconds": {"phantom": round(t_phantom, 3), "registration": round(result.seconds, 3)},
        "files": AUTO_FILES if args.auto else FILES,
        "registration": {k: v for k, v in result.to_dict().items() if k != "trace"},
    }
    with outputs.staged() as stage:  # every file moved into the folder at the end, none if anything fails
        stage.folder(out)

        def to(name: str) -> Path:
            return stage.path(out / name)

        write_image(to("target.npy"), fixed)
        write_image(to("target.png"), fixed)
        write_image(to("start.png"), before)
        write_image(to("registered.png"), after)
        write_png(to("overlay.png"), composites.overlay_rgb(fixed, before))
        composites.save_png(to("before_after.png"), composites.before_after(fixed, before, after))
        composites.save_png(to("checkerboard.png"), composites.checkerboard(fixed, after))
        composites.save_png(to("loss_curve.png"), loss_curve(result))
        write_json(to("geometry.json"), detector_to_dict(detector))
        write_json(to("target_pose.json"), pose_to_dict(target))
        write_json(to("start_pose.json"), pose_to_dict(start))
        write_json(to("registered_pose.json"), pose_to_dict(result.pose))
        if network is not None:
            summary["start"] = "the pose network's prediction (model.pt), trained on the phantom's DRRs"
            summary["network"] = {"seconds": round(network.last_seconds, 4), "hypotheses": len(hypotheses),
                                  "training_seconds": round(model_file[1], 1), "validation": network.info.validation}
            to("model.pt").write_bytes(model_file[0])
        write_json(to("result.json"), summary)
    state = "converged" if result.converged else f"stopped ({result.stop_reason})"
    print(f"registration {state} in {result.seconds:.1f} s, {result.iterations} iterations: "
          f"mTRE {before_err['mtre_mm']:.1f} -> {after_err['mtre_mm']:.2f} mm, "
          f"rotation error {after_err['rotation_error_deg']:.2f} deg, ZNCC {result.initial_similarity:.3f} -> "
          f"{result.similarity:.4f}")
    print(f"wrote {out}/result.json, {out}/before_after.png (DRR edges over the X-ray), {out}/loss_curve.png")
    return 0
