"""``diffreg train --kind similarity``: train the learned SO(4) similarity (Chen & Kong, WACV 2026).

    diffreg train --kind similarity --ct CT --geometry G.json --out SIM.pt [--minutes 10 | --steps N]
                  [--embedding so4|se3|euclidean] [--max-rot 30 --max-trans 40]
                  [--max-offset-rot 45 --max-offset-trans 60] [--image-size 64] [--groups 8]
    diffreg train --kind similarity --phantoms 8 --geometry G.json --out SIM.pt ...   (patient-agnostic)

The network learns a distance between an X-ray and a DRR whose gradient with
respect to the pose points along the SE(3) geodesic to the truth
(`DiffRegLogic.learning.similarity_trainer`); ``diffreg register
--similarity learned --similarity-model SIM.pt`` then registers on it and
polishes with an image similarity. ``--max-rot/--max-trans`` bound the true
poses about the reference view, ``--max-offset-rot/--max-offset-trans`` the
DRRs' offsets from them (the capture range it is trained for). With
``--phantoms N`` the pairs come from N seeded phantoms of varied anatomy and
the model is accepted for any CT. The rest (budget, progress, checkpoints,
``--resume``, torchrun) is ``diffreg train``'s.
"""

from __future__ import annotations

from ..errors import InputError
from .options import PHANTOM

KINDS = ("pose", "similarity")
EMBEDDINGS = ("so4", "se3", "euclidean")  # DiffRegLogic.learning.so4.EMBEDDINGS (kept torch-free here)
SIMILARITY_DEFAULTS = {"max_rot": 30.0, "max_trans": 40.0, "image_size": 64}
POSE_ONLY = ("backbone", "no_decoder", "no_attention", "no_positional_embedding", "no_incremental", "pool_images")


def add_similarity_options(p) -> None:
    g = p.add_argument_group("--kind similarity")
    g.add_argument("--embedding", choices=EMBEDDINGS, default="so4",
                   help="so4: K unit-quaternion pairs, the paper's; se3 and euclidean: the baselines (default so4)")
    g.add_argument("--groups", type=int, default=8, help="K, the embedding's groups (default 8)")
    g.add_argument("--max-offset-rot", type=float, default=45.0,
                   help="the training DRRs' rotation offsets from the truth, deg per axis (default 45)")
    g.add_argument("--max-offset-trans", type=float, default=60.0,
                   help="their translation offsets, mm per axis (default 60)")
    g.add_argument("--pool-pairs", type=int, default=None, help="pairs rendered for training (default: the trainer's)")
    g.add_argument("--phantoms", type=int, default=0,
                   help="patient-agnostic: train on N seeded phantoms of varied anatomy instead of --ct (default 0)")


def check_similarity_arguments(args):
    """`train.check` for ``--kind similarity``: its defaults, its refusals; returns the checked `Outputs`."""
    from pathlib import Path

    from ..validation.outputs import Outputs

    for name in POSE_ONLY:
        if getattr(args, name) not in (None, False):
            raise InputError(f"--{name.replace('_', '-')} is an option of the pose network, not of --kind similarity")
    if args.rotation != "6d" or args.pose_loss != "poster":
        raise InputError("--rotation and --pose-loss are options of the pose network, not of --kind similarity")
    for name, value in SIMILARITY_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if Path(args.out).suffix.lower() != ".pt":
        raise InputError(f"--out must be a .pt model file, got {args.out}")
    if not 0 <= args.phantoms <= 1000:
        raise InputError(f"--phantoms must be from 0 to 1000 phantoms, got {args.phantoms}")
    if args.phantoms == 0 and args.ct is None:
        raise InputError("--ct CT is needed (the patient's CT), or --phantoms N for a patient-agnostic similarity")
    if args.phantoms and args.ct is not None:
        raise InputError("--phantoms N trains on phantoms: leave out --ct (the CT to register is given to register)")
    if args.ct not in (None, PHANTOM) and not Path(args.ct).exists():
        raise InputError(f"CT file or folder not found: {args.ct}")
    if args.geometry is None and args.ct != PHANTOM and not args.phantoms:
        raise InputError("--geometry G.json is needed: the detector of the X-rays the similarity will see "
                         "(source_to_detector_mm, rows, cols, pixel_spacing_mm)")
    from .train import check_reference_options

    check_reference_options(args)
    if args.minutes is not None and not (0 < args.minutes < 1e6):
        raise InputError(f"--minutes must be a positive number of minutes, got {args.minutes:g}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.image_size < 16 or args.image_size % 8 or args.image_size > 1024:
        raise InputError(f"--image-size must be a multiple of 8 from 16 to 1024, got {args.image_size}")
    if not 1 <= args.groups <= 256:
        raise InputError(f"--groups must be from 1 to 256, got {args.groups}")
    if args.batch_size < 2 or args.batch_size > 4096:
        raise InputError(f"--batch-size must be from 2 to 4096 pairs, got {args.batch_size}")
    if args.pool_pairs is not None and args.pool_pairs < args.batch_size:
        raise InputError(f"--pool-pairs must be at least --batch-size ({args.batch_size}), got {args.pool_pairs}")
    for name, high, unit in (("max_rot", 180.0, "deg"), ("max_offset_rot", 180.0, "deg"),
                             ("max_trans", 1000.0, "mm"), ("max_offset_trans", 1000.0, "mm")):
        if not 0 <= getattr(args, name) <= high:
            raise InputError(f"--{name.replace('_', '-')} must be from 0 to {high:g} {unit}, got {getattr(args, name):g}")
    if args.max_offset_rot == 0 or args.max_offset_trans == 0:
        raise InputError("--max-offset-rot and --max-offset-trans must both be above 0: the loss compares the "
                         "rotation and translation parts of the pose gradient separately (no offset: no direction)")
    if args.lr is not None and not (0 < args.lr < 1):
        raise InputError(f"--lr must be in (0, 1), got {args.lr:g}")
    if args.resume and not Path(args.out).is_file():
        raise InputError(f"--resume continues the training saved in --out, but {args.out} does not exist")
    outputs = Outputs([args.ct, args.geometry, args.reference_pose, args.reference_xray])
    outputs.file(args.out, "--out")
    return outputs


def similarity_config(args):
    """The `SimilarityTrainConfig` the command line asks for."""
    from ..learning.poses import PoseRange
    from ..learning.similarity_net import SimilarityNetConfig
    from ..learning.similarity_trainer import SimilarityTrainConfig
    from .train import DEFAULT_MINUTES

    network = SimilarityNetConfig(image_size=args.image_size, embedding=args.embedding, groups=args.groups)
    minutes = args.minutes if args.minutes is not None or args.steps is not None else DEFAULT_MINUTES
    values = dict(network=network, target_range=PoseRange(args.max_rot, args.max_trans),
                  offset_range=PoseRange(args.max_offset_rot, args.max_offset_trans), batch_size=args.batch_size,
                  steps=args.steps, minutes=minutes, seed=args.seed, renderer=args.renderer,
                  phantoms=args.phantoms, source_to_isocenter_mm=args.source_to_isocenter)
    if args.pool_pairs is not None:
        values["pool_pairs"] = args.pool_pairs
    if args.lr is not None:
        values["lr"] = args.lr
    if args.no_augmentation:
        from ..learning.augment import NO_AUGMENTATION

        values["augmentation"] = NO_AUGMENTATION
    return SimilarityTrainConfig(**values)


def run_similarity(args) -> int:
    import os
    from dataclasses import replace

    from ..learning.similarity_trainer import train_similarity
    from .train import (check_reference_view, json_printer, keeping_checkpoint, read_training_inputs,
                        reference_pose_of, training_device)

    device = training_device(args)
    if args.phantoms:
        args.ct = PHANTOM  # read_training_inputs' detector default; the phantoms are built by the trainer
    volume, detector = read_training_inputs(args, device)
    reference = None
    if not args.phantoms:
        reference = reference_pose_of(args, volume, detector)
        check_reference_view(volume, detector, reference)
    elif args.reference_pose is not None or args.reference_xray is not None:
        reference = reference_pose_of(args, volume, detector)
    config = replace(similarity_config(args), device=str(device))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and args.progress != "json":
        on = f"{args.phantoms} phantoms" if args.phantoms else args.ct
        print(f"training a learned {args.embedding} similarity ({args.image_size} px, truths +-{args.max_rot:g} deg / "
              f"+-{args.max_trans:g} mm, offsets +-{args.max_offset_rot:g} deg / +-{args.max_offset_trans:g} mm, "
              + (f"{config.steps} steps" if config.steps else f"{config.minutes:g} min")
              + f") on {on}, {device}; model: {args.out}", flush=True)
    progress = json_printer() if args.progress == "json" and main_rank else None
    result = keeping_checkpoint(args, lambda: train_similarity(
        None if args.phantoms else volume, detector, config, reference_pose=reference, checkpoint_path=args.out,
        resume=args.resume, progress=progress, bar=args.progress == "bar" and main_rank))
    if main_rank and args.progress != "json":
        val = result.validation or {}
        cosine, base = val.get("cosine"), val.get("baseline_cosine")
        print(f"trained {result.step} steps in {result.elapsed_s:.0f} s"
              + (f"; validation cosine {cosine:.3f} (ZNCC's {base:.3f})" if cosine is not None else "")
              + f"; wrote {args.out}")
    return 0
