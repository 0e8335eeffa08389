"""``diffreg register --similarity learned``: the checks, loading and report of the learned similarity.

The measure is `DiffRegLogic.learning.similarity_inference.LearnedSimilarity`
from ``--similarity-model``; the registration runs on it over the pyramid,
then polishes with ``--polish`` (default zncc) at the finest level
(`register_learned`). The result JSON gains ``learned_similarity``: the
model, its settings and validation, and the stages.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .options import LEARNED


def check_learned(args, n_xrays: int) -> None:
    """Refuse a missing model file and several X-rays (torch-free; ``--similarity-model`` without learned is
    refused by `options.registration_options`)."""
    if args.similarity != LEARNED:
        return
    if args.similarity_model is not None and not Path(args.similarity_model).is_file():
        raise InputError(f"similarity model file not found: {args.similarity_model} (make one with diffreg train "
                         "--kind similarity)")
    if n_xrays > 1:
        raise InputError("--similarity learned registers one X-ray (the learned measure and its polish are "
                         "single-view); give one --xray")


def load_learned(args, volume, detector, device):
    """The `LearnedSimilarity` of ``--similarity-model`` (checked against the CT and detector), or None."""
    if args.similarity != LEARNED:
        return None
    from ..learning.similarity_inference import load_similarity

    return load_similarity(args.similarity_model, volume, detector, device=device)


def learned_name(args) -> str:
    """What the progress line calls the measure: "learned" or "learned + polish zncc"."""
    return "learned" + ("" if args.polish == "none" else f" + polish {args.polish}")


def add_learned_report(report: dict, args, learned, result) -> None:
    """The result JSON's ``learned_similarity`` block (and ``options.similarity = "learned"``)."""
    report.setdefault("options", {})["similarity"] = LEARNED
    report["learned_similarity"] = {"model": str(args.similarity_model), "polish": args.polish,
                                    **{k: v for k, v in learned.info.items() if k != "path"},
                                    "stages": getattr(result, "stages", [])}
