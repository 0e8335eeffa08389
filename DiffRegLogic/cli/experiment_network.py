"""``diffreg experiment network-realism``: a trained pose network (``--model``) on realistic simulated X-rays.

The arguments' checks (torch-free) and the run of
`DiffRegLogic.experiments.network_realism_study.network_realism`: ``--n`` test
poses in the model's training range (or ``--max-rot`` / ``--max-trans``), each
simulated with every ``--presets`` degradation, predicted by the network
(``--hypotheses``) and registered from its poses by every ``--variants``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

NETWORK_KINDS = ("network-realism",)
"""The experiments on a trained pose network (``--model``)."""


def check_network(args) -> list[str]:
    """The pose-network experiments' arguments (torch-free); returns the model file as an input to protect."""
    model = getattr(args, "model", None)
    if args.kind not in NETWORK_KINDS:
        if model is not None:
            raise InputError(f"--model is for the {', '.join(NETWORK_KINDS)} experiment (the ablation trains its own "
                             f"models)")
        return []
    if model is None:
        raise InputError("network-realism tests a trained pose network: give --model MODEL.pt (from `diffreg train "
                         "--ct CT --geometry G.json --out MODEL.pt`)")
    if not Path(model).is_file():
        raise InputError(f"--model {model} {'is a folder, not a model file' if Path(model).is_dir() else 'does not exist'}"
                         f"; train one with `diffreg train --ct CT --geometry G.json --out MODEL.pt`")
    if args.xray is not None or args.truth is not None:
        raise InputError("network-realism simulates its X-rays at poses in the model's range; drop --xray and --truth")
    for name, why in (("source_to_isocenter", "the model's reference view is fixed"),
                      ("train_minutes", "the model is trained already"), ("train_steps", "the model is trained already"),
                      ("optimizers", "the refinement takes the registration's optimiser")):
        if getattr(args, name, None) is not None:
            raise InputError(f"--{name.replace('_', '-')} is not an option of network-realism: {why}")
    for name in ("max_rot", "max_trans"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be above 0 for network-realism (the test poses' range "
                             f"about the model's reference view), got {value:g}")
    from ..limits import check_number

    check_number("--hypotheses", args.hypotheses, 1, 64, integer=True)
    return [model]


def run_network(args, volume, detector, out, ct_name: str, device):
    """Load the model for this CT and detector and run the experiment with the command line's options."""
    from ..experiments import network_realism
    from ..learning.inference import PoseNetworkInitializer
    from ..learning.poses import PoseRange
    from .common import hu_conversion
    from .experiment import n_starts
    from .options import POLYCHROMATIC

    network = PoseNetworkInitializer.from_file(args.model, volume, detector, hypotheses=args.hypotheses,
                                               device=device)
    stored = network.info.pose_range
    pose_range = None
    if args.max_rot is not None or args.max_trans is not None:
        pose_range = PoseRange(stored.rotation_deg if args.max_rot is None else (args.max_rot,) * 3,
                               stored.translation_mm if args.max_trans is None else (args.max_trans,) * 3)
    options = {"renderer": args.tracer if args.renderer == POLYCHROMATIC else args.renderer,
               "similarity": args.similarities[0], "step_voxels": args.step_voxels,
               "max_memory_mb": args.max_memory_mb}
    if args.levels is not None:
        options["levels"] = tuple(args.levels)
    if args.iterations is not None:
        options["max_iterations"] = args.iterations
    return network_realism(volume, detector, network, out, presets=tuple(args.presets),
                           variants=tuple(args.variants), n=n_starts(args), seed=args.seed,
                           pose_range=pose_range, options=options, convention=args.convention,
                           hu_to_mu=hu_conversion(args), ct_name=ct_name)
