"""``diffreg train``: train a patient-specific pose network on DRRs of the patient's CT (the MICCAI 2023 poster's method).

    diffreg train [--kind pose] --ct CT --geometry G.json --out MODEL.pt [--minutes 10 | --steps N]
                  [--reference-pose P.json] [--max-rot 45 --max-trans 60] [--image-size 128]
                  [--backbone efficientnet-b0|small] [--no-decoder] [--no-attention] [--no-incremental]

The network learns, from DRRs of this CT rendered at random poses about a
reference view (AP about the CT centre by default), to predict the pose of an
X-ray taken with this detector; ``diffreg register --model MODEL.pt`` then
starts the registration from its prediction. Under ``torchrun`` the same
command trains with DistributedDataParallel (each process renders its own
share of the DRRs; gloo on CPU, nccl on CUDA).

Progress: a bar on stderr (``--progress bar``, the default), JSON lines on
stdout (``--progress json``, one object per line with an ``"event"`` key:
`DiffRegLogic.learning.progress`), or nothing. The model file is rewritten
atomically at every checkpoint; an interrupted run (Ctrl-C, SIGTERM) keeps
its last checkpoint, and ``--resume`` continues it.

``--kind similarity`` trains the learned SO(4) similarity instead (Chen &
Kong; `train_similarity`): the same command, budget, progress, checkpoint
and torchrun conventions, with its own options.
"""

from __future__ import annotations

import argparse

from ..errors import InputError
from .options import PHANTOM, add_engine_options, add_hu_options

BACKBONES = ("efficientnet-b0", "small")
ROTATIONS = ("6d", "quaternion")
POSE_LOSSES = ("poster", "geodesic")
PROGRESS = ("bar", "json", "none")
DEFAULT_MINUTES = 10.0
"""Training budget when neither ``--minutes`` nor ``--steps`` is given (the issue's CPU budget)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training; ``kept_message`` says what the error line reports was kept."""

    def __init__(self, kept_message: str, cause: BaseException):
        import signal

        super().__init__(kept_message)
        self.kept_message = kept_message
        self.signal = getattr(cause, "signal", signal.SIGINT)


def add_parser(sub) -> argparse.ArgumentParser:
    from .train_similarity import KINDS, add_similarity_options

    p = sub.add_parser("train", help="train a pose network (start poses for register --model) or a learned "
                                     "similarity (register --similarity learned) on DRRs of the patient's CT")
    p.add_argument("--kind", choices=KINDS, default="pose",
                   help="pose: the pose network (default); similarity: the learned SO(4) similarity")
    p.add_argument("--ct", default=None, help="CT file (NIfTI, NRRD, MHA) or DICOM series folder, or 'phantom' "
                                              "(required, except for --kind similarity --phantoms N)")
    p.add_argument("--geometry", default=None,
                   help="detector geometry JSON of the X-rays the model will see (default for --ct phantom: the "
                        "demo's 200x200 detector)")
    p.add_argument("--reference-pose", default=None,
                   help="pose JSON the training poses are sampled about (default: an AP view of the CT centre at "
                        "--source-to-isocenter)")
    p.add_argument("--reference-xray", default=None,
                   help="DICOM XA/RF X-ray whose C-arm angles and source-to-isocentre distance give the reference "
                        "view about the CT centre (instead of --reference-pose)")
    p.add_argument("--source-to-isocenter", type=float, default=None,
                   help="source-to-CT-centre distance of the default AP reference view, mm (default: SDD / 2)")
    p.add_argument("--out", required=True, help="model file (.pt): weights, settings, CT and detector fingerprints")
    p.add_argument("--max-rot", type=float, default=None,
                   help="rotation range about each axis, deg (default 45; --kind similarity: 30, the true poses)")
    p.add_argument("--max-trans", type=float, default=None,
                   help="translation range along each axis, mm (default 60; --kind similarity: 40)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None,
                        help=f"training time budget in minutes (default {DEFAULT_MINUTES:g})")
    budget.add_argument("--steps", type=int, default=None, help="training steps instead of a time budget")
    p.add_argument("--image-size", type=int, default=None,
                   help="network input side, a multiple of 32 (default 128; --kind similarity: 64, a multiple of 8)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (per process under torchrun)")
    p.add_argument("--pool-images", type=int, default=None, help="DRRs rendered for training (default: the trainer's)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: the trainer's)")
    p.add_argument("--backbone", choices=BACKBONES, default=None,
                   help="EfficientNet-b0 (the poster's) or a small CNN (fast on CPU); default efficientnet-b0")
    p.add_argument("--no-decoder", action="store_true", help="no structure-reconstruction decoder (ablation: no B)")
    p.add_argument("--no-attention", action="store_true", help="no self-attention (ablation: no C)")
    p.add_argument("--no-positional-embedding", action="store_true", help="attention without the 2D positional embedding")
    p.add_argument("--no-incremental", action="store_true",
                   help="render every DRR at the full range at the start instead of in widening stages")
    p.add_argument("--no-augmentation", action="store_true", help="train on clean DRRs (no X-ray realism)")
    p.add_argument("--rotation", choices=ROTATIONS, default="6d", help="rotation output (default 6d)")
    p.add_argument("--pose-loss", choices=POSE_LOSSES, default="poster",
                   help="poster: |dR|(deg) + |dt|(mm); geodesic: rotation angle x 100 mm + |dt|")
    p.add_argument("--seed", type=int, default=0, help="seed of the poses, augmentations and weights (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the training saved in --out")
    p.add_argument("--progress", choices=PROGRESS, default="bar",
                   help="bar (stderr), json (one JSON object per line on stdout), none")
    add_similarity_options(p)
    add_engine_options(p)
    add_hu_options(p)
    p.set_defaults(func=run, check=check)
    return p


POSE_DEFAULTS = {"max_rot": 45.0, "max_trans": 60.0, "image_size": 128, "backbone": "efficientnet-b0"}
"""The pose network's defaults of the options the two kinds share (``None`` on the parser)."""


def check(args):
    """Argument and path errors before any heavy import; returns the checked `Outputs`."""
    from pathlib import Path

    from ..validation.outputs import Outputs
    from .train_similarity import check_similarity_arguments

    if args.kind == "similarity":
        return check_similarity_arguments(args)
    for name, value in POSE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    similarity_only = [f"--{n.replace('_', '-')}" for n, default in (("embedding", "so4"), ("groups", 8),
                       ("max_offset_rot", 45.0), ("max_offset_trans", 60.0), ("pool_pairs", None), ("phantoms", 0))
                       if getattr(args, n) != default]
    if similarity_only:
        raise InputError(f"{', '.join(similarity_only)}: options of --kind similarity, not of the pose network")
    if args.ct is None:
        raise InputError("--ct CT is needed: the patient's CT the pose network learns")
    if Path(args.out).suffix.lower() != ".pt":
        raise InputError(f"--out must be a .pt model file, got {args.out}")
    if args.ct != PHANTOM and not Path(args.ct).exists():
        raise InputError(f"CT file or folder not found: {args.ct}")
    if args.geometry is None and args.ct != PHANTOM:
        raise InputError("--geometry G.json is needed: the detector of the X-rays the model will see "
                         "(source_to_detector_mm, rows, cols, pixel_spacing_mm)")
    check_reference_options(args)
    if args.minutes is not None and not (args.minutes > 0 and args.minutes < 1e6):
        raise InputError(f"--minutes must be a positive number of minutes, got {args.minutes:g}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.image_size < 32 or args.image_size % 32 or args.image_size > 1024:
        raise InputError(f"--image-size must be a multiple of 32 from 32 to 1024, got {args.image_size}")
    if args.batch_size < 2 or args.batch_size > 4096:
        raise InputError(f"--batch-size must be from 2 to 4096 images, got {args.batch_size}")
    if args.pool_images is not None and args.pool_images < args.batch_size:
        raise InputError(f"--pool-images must be at least --batch-size ({args.batch_size}), got {args.pool_images}")
    if not (0 <= args.max_rot <= 180.0):
        raise InputError(f"--max-rot must be from 0 to 180 deg, got {args.max_rot:g}")
    if not (0 < args.max_trans <= 1000.0):
        raise InputError(f"--max-trans must be more than 0 and at most 1000 mm (the network's translation output is "
                         f"scaled by it), got {args.max_trans:g}")
    if args.source_to_isocenter is not None and not args.source_to_isocenter > 0:
        raise InputError(f"--source-to-isocenter must be positive (mm), got {args.source_to_isocenter:g}")
    if args.lr is not None and not (0 < args.lr < 1):
        raise InputError(f"--lr must be in (0, 1), got {args.lr:g}")
    if args.no_attention and not args.no_positional_embedding:
        args.no_positional_embedding = True  # the embedding is added to the attention's tokens
    if args.resume and not Path(args.out).is_file():
        raise InputError(f"--resume continues the training saved in --out, but {args.out} does not exist")
    outputs = Outputs([args.ct, args.geometry, args.reference_pose, args.reference_xray])
    outputs.file(args.out, "--out")
    return outputs


def check_reference_options(args) -> None:
    """The geometry and reference-view files exist; ``--reference-xray`` stands alone (torch-free)."""
    from pathlib import Path

    for option in ("geometry", "reference_pose", "reference_xray"):
        path = getattr(args, option)
        if path is not None and not Path(path).exists():
            raise InputError(f"--{option.replace('_', '-')} file not found: {path}")
    if args.reference_xray is not None:
        for other in ("reference_pose", "source_to_isocenter"):
            if getattr(args, other) is not None:
                raise InputError(f"--reference-xray and --{other.replace('_', '-')} both give the reference view "
                                 f"(the X-ray's DICOM states its source-to-isocentre distance): keep one")


def train_config(args):
    """The `TrainConfig` the command line asks for."""
    from ..learning.networks import PoseNetConfig
    from ..learning.poses import PoseRange
    from ..learning.trainer import TrainConfig

    network = PoseNetConfig(image_size=args.image_size, backbone=args.backbone, decoder=not args.no_decoder,
                            attention=not args.no_attention, positional_embedding=not args.no_positional_embedding,
                            rotation=args.rotation, max_translation_mm=(args.max_trans,) * 3)
    minutes = args.minutes if args.minutes is not None or args.steps is not None else DEFAULT_MINUTES
    values = dict(network=network, pose_range=PoseRange((args.max_rot,) * 3, (args.max_trans,) * 3),
                  batch_size=args.batch_size, steps=args.steps, minutes=minutes, pose_loss=args.pose_loss,
                  incremental=not args.no_incremental, seed=args.seed, renderer=args.renderer)
    if args.pool_images is not None:
        values["pool_images"] = args.pool_images
    if args.lr is not None:
        values["lr"] = args.lr
    if args.no_augmentation:
        from ..learning.augment import NO_AUGMENTATION

        values["augmentation"] = NO_AUGMENTATION
    return TrainConfig(**values)


def reference_pose_of(args, volume, detector):
    """(4, 4) float64: ``--reference-pose``, the C-arm angles of ``--reference-xray`` about the CT centre, or
    the AP view at ``--source-to-isocenter`` (default SDD / 2)."""
    from ..geometry.files import read_pose
    from ..learning.poses import reference_view

    if args.reference_pose is not None:
        return read_pose(args.reference_pose)
    if getattr(args, "reference_xray", None) is not None:
        from ..registration.initializers import ClinicalAngles
        from ..xray.readers import read_xray

        xray = read_xray(args.reference_xray)
        try:
            angles = ClinicalAngles.from_xray(xray)
        except InputError as exc:
            raise InputError(f"--reference-xray {args.reference_xray}: {exc}; or give --reference-pose P.json") \
                from None
        return angles(xray, detector, volume)[0]
    return reference_view(volume, detector, args.source_to_isocenter)


def check_reference_view(volume, detector, reference) -> None:
    """Refuse a reference view that puts the CT behind the source or off the detector (blank training DRRs)."""
    from ..drr.footprint import footprint_mask
    from ..registration.checks import check_start

    check_start(volume, detector, reference,
                "the reference pose (--reference-pose, --reference-xray or --source-to-isocenter)")
    coarse = detector.downsample(max(1.0, max(detector.shape) / 64.0))
    if not bool((footprint_mask(volume, coarse, reference)[0] > 0).any()):
        raise InputError("at the reference pose the CT's footprint covers none of the detector: every training DRR "
                         "would be blank; check --reference-pose (or --reference-xray, --source-to-isocenter) and --geometry")


def read_training_inputs(args, device):
    """(volume on ``device``, detector) for training: the CT in the register command's conversion."""
    from ..geometry.files import read_geometry
    from .common import dtype_of, hu_conversion, load_ct

    if args.renderer == "polychromatic":
        raise InputError("diffreg train renders monochromatic DRRs (--renderer siddon or trilinear)")
    volume = load_ct(args.ct, hu_conversion(args), dtype_of(args.dtype)).to(device)
    if args.geometry is not None:
        detector = read_geometry(args.geometry)
    else:
        from ..experiments.demo import demo_detector

        detector = demo_detector()
    return volume, detector


def json_printer():
    """A progress callable that prints each record as one JSON line on stdout."""
    from ..learning.progress import progress_line

    def emit(record: dict) -> None:
        record = dict(record)
        event = record.pop("event", "progress")
        print(progress_line(event, **record), flush=True)

    return emit


def training_device(args):
    """The device of ``--device``; under torchrun on CUDA, this process's GPU (LOCAL_RANK)."""
    import os

    from .common import device_of

    device = device_of(args)
    if os.environ.get("LOCAL_RANK") is not None and device.type == "cuda":
        import torch

        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def keeping_checkpoint(args, train_now):
    """``train_now()``; on Ctrl-C / SIGTERM, `TrainingInterrupted` saying whether ``--out`` holds a checkpoint."""
    import os

    before = os.stat(args.out).st_mtime_ns if os.path.exists(args.out) else None
    try:
        return train_now()
    except KeyboardInterrupt as exc:
        written = os.path.exists(args.out) and os.stat(args.out).st_mtime_ns != before
        raise TrainingInterrupted(f"the last checkpoint is kept in {args.out} (continue it with --resume)" if written
                                  else "it had not finished a step: no model was written", exc) from exc


def run(args, outputs=None) -> int:
    import os

    from ..learning.trainer import train
    from .app import imports_done

    imports_done()
    outputs = outputs or check(args)
    if args.kind == "similarity":
        from .train_similarity import run_similarity

        return run_similarity(args)
    device = training_device(args)
    volume, detector = read_training_inputs(args, device)
    reference = reference_pose_of(args, volume, detector)
    check_reference_view(volume, detector, reference)
    config = train_config(args)
    from dataclasses import replace

    config = replace(config, device=str(device))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and args.progress != "json":
        print(f"training a pose network ({args.backbone}, {args.image_size} px, +-{args.max_rot:g} deg / "
              f"+-{args.max_trans:g} mm, " + (f"{config.steps} steps" if config.steps else f"{config.minutes:g} min")
              + f") on {device}; model: {args.out}", flush=True)
    progress = json_printer() if args.progress == "json" and main_rank else None
    result = keeping_checkpoint(args, lambda: train(volume, detector, reference, config, checkpoint_path=args.out,
                                                    resume=args.resume, progress=progress,
                                                    bar=args.progress == "bar" and main_rank))
    if main_rank and args.progress != "json":
        val = result.validation or {}
        median = val.get("mtre_mm_median")
        print(f"trained {result.step} steps in {result.elapsed_s:.0f} s"
              + (f"; validation median mTRE {median:.1f} mm" if median is not None else "") + f"; wrote {args.out}")
    return 0
