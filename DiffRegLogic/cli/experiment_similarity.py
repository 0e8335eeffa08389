"""``diffreg experiment similarity-landscape|similarity-convergence|similarity-robustness``: the learned similarities.

The arguments' checks (torch-free) and the run of the three experiments of
`DiffRegLogic.experiments.similarity_study` on the models of
``--similarity-models NAME=PATH`` (files of ``diffreg train --kind similarity``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .options import POLYCHROMATIC

SIMILARITY_KINDS = ("similarity-landscape", "similarity-convergence", "similarity-robustness")
"""The experiments on learned similarities (``--similarity-models``)."""


def parse_models(specs) -> dict[str, str]:
    """``--similarity-models NAME=PATH ...`` as {name: path}: names of letters, digits, ``_ . -``, once each."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = (part.strip() for part in str(spec).partition("="))
        if not sep or not path or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise InputError(f"--similarity-models takes NAME=PATH (e.g. so4=sim.pt; a name of letters, digits, "
                             f"_ . -), got {spec!r}")
        if name in models:
            raise InputError(f"--similarity-models names {name!r} twice; give each model its own name")
        models[name] = path
    return models


def check_similarity(args) -> dict[str, str]:
    """The learned-similarity experiments' arguments (torch-free); returns the models {name: path}."""
    from .experiment import given
    from ..registration.optimizers import OPTIMIZERS
    from ..similarity.registry import SIMILARITIES

    if getattr(args, "polish_levels", None) and args.kind != "similarity-robustness":
        raise InputError("--polish-levels is for similarity-robustness")
    if args.polish is not None and args.kind != "similarity-robustness":
        raise InputError("--polish is for similarity-robustness (the other experiments run no polish)")
    if args.kind not in SIMILARITY_KINDS:
        if args.similarity_models:
            raise InputError(f"--similarity-models is for the {', '.join(SIMILARITY_KINDS)} experiments")
        return {}
    models = parse_models(args.similarity_models)
    for name, path in models.items():
        if not Path(path).is_file():
            raise InputError(f"--similarity-models {name}={path}: {path} "
                             f"{'is a folder, not a model file' if Path(path).is_dir() else 'does not exist'}; train "
                             f"one with `diffreg train --kind similarity --ct CT --geometry G.json --out SIM.pt`")
    if args.kind == "similarity-convergence" and len(models) != 1:
        raise InputError(f"similarity-convergence registers on one learned similarity: give exactly one "
                         f"--similarity-models NAME=PATH (got {len(models)})")
    if args.renderer == POLYCHROMATIC:
        raise InputError("the learned similarities compare monochromatic DRRs; use --renderer siddon or trilinear")
    for option, names, table in (("--similarities", args.similarities, SIMILARITIES),
                                 ("--optimizers", given(args, "optimizers"), OPTIMIZERS)):
        for name in names:
            if name not in table or names.count(name) > 1:
                why = "is given twice" if name in table else "is unknown"
                raise InputError(f"{option}: {name!r} {why}; choose from {', '.join(sorted(table))}")
    if set(models) & set(args.similarities):  # a model name has no "+": only a similarity's name can clash
        raise InputError(f"--similarity-models: {' '.join(set(models) & set(args.similarities))} is also a "
                         "--similarities name; rename the model")
    return models


def run_similarity(args, volume, image, detector, truth, out, common: dict, ct_name: str, device):
    """Run a learned-similarity experiment: the models loaded for this CT and detector, then the study."""
    from .. import experiments
    from ..learning.similarity_inference import load_similarity
    from .experiment import given, n_starts, start_range

    models = {name: load_similarity(path, volume, detector, device=device)
              for name, path in parse_models(args.similarity_models).items()}
    case, (max_rot, max_trans), polish = (volume, image, detector, truth), start_range(args), given(args, "polish")
    starts = dict(n=n_starts(args), max_rotation_deg=max_rot, max_translation_mm=max_trans, seed=args.seed)
    if args.kind == "similarity-landscape":
        return experiments.similarity_landscapes(*case, out, measures={**models, **{s: s for s in args.similarities}},
                                                 rotation_range_deg=max_rot, translation_range_mm=max_trans,
                                                 n_points=args.points, renderer=common["renderer"])
    if args.kind == "similarity-convergence":
        engine = {k: common[k] for k in ("renderer", "step_voxels", "max_memory_mb")}
        return experiments.similarity_convergence(*case, *models.values(), out, optimizers=given(args, "optimizers"),
                                                  levels=common["levels"], iterations=common["max_iterations"],
                                                  options=engine, ct_name=ct_name, **starts)
    variants = {s: {"similarity": s} for s in args.similarities}
    for name, model in models.items():
        variants[name] = {"similarity": model, "polish": None}
        if polish != "none":
            variants[f"{name}+{polish}"] = {"similarity": model, "polish": polish}
            if args.polish_levels:
                levels = tuple(args.polish_levels)
                variants[f"{name}+{polish}@{','.join(f'{v:g}' for v in levels)}"] = {
                    "similarity": model, "polish": polish, "polish_levels": levels}
    options = {k: v for k, v in common.items() if k != "similarity"}
    return experiments.similarity_robustness(*case, out, variants=variants, ct_name=ct_name, **starts,
                                             options=dict(options, optimizer=given(args, "optimizers")[0]))
