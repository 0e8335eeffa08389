"""The panel's learned similarity: its label, its model for the panel's inputs, and two-stage progress and notes.

`DiffRegLogic.mrml.actions` registers with the learned similarity of
``similarityModelPath`` and a polish (`register_learned`); this module holds
what that needs besides the registration itself.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from .nodes import volume_from_node
from .settings import POLISH_NONE, SIMILARITY_LEARNED, Setup, learned_model_path


def similarity_label(setup: Setup) -> str:
    """How the results name the setup's similarity: its engine name, or ``"learned + polish zncc"`` / ``"learned"``."""
    if setup.similarity != SIMILARITY_LEARNED:
        return setup.similarity
    return "learned" if setup.polishSimilarity == POLISH_NONE else f"learned + polish {setup.polishSimilarity}"


def load_learned_similarity(setup: Setup, inputs):
    """The learned similarity of ``similarityModelPath`` for these inputs (None for an image similarity).

    The model file checks that it is a similarity model made for this CT
    (unless it is patient-agnostic) and this detector (InputError with its
    message otherwise). It sees the CT the panel registers, monochromatic:
    with the polychromatic X-ray model the CT node is read again for it.
    """
    path = learned_model_path(setup)
    if path is None:
        return None
    from ..learning.similarity_inference import load_similarity

    device = inputs.volume.mu.device
    ct = volume_from_node(setup.inputVolume).to(device) if setup.polychromatic else inputs.volume
    return load_similarity(str(path), ct, inputs.detector, device=str(device))


def _stage_notes(result) -> list[str]:
    """``["stages: learned 0.1200 -> 0.3400 in 40 iterations, zncc ..."]`` of a learned registration, else []."""
    phrases = []
    for stage in (s for s in (getattr(result, "stages", None) or ()) if isinstance(s, dict)):
        before, after = stage.get("initial_similarity"), stage.get("similarity_value")
        text = str(stage.get("similarity", "stage"))
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)):
            text += f" {before:.4f} -> {after:.4f}"
        phrases.append(text + (f" in {stage['iterations']} iterations" if stage.get("iterations") is not None else ""))
    return ["stages: " + ", ".join(phrases)] if phrases else []


def _final_measure(result, polish: str | None) -> str:
    """The measure of a learned registration's final numbers: its last stage's (the learned one when it was
    cancelled before the polish)."""
    stages = getattr(result, "stages", None) or ()
    last = stages[-1].get("similarity") if stages and isinstance(stages[-1], dict) else None
    return last if isinstance(last, str) else (polish or "learned")


def _stage_progress(polished: bool) -> Callable:
    """Progress of a learned registration as one run: the polish is one more level after the learned stage's.

    `register_learned` calls back from two registrations (each counts its
    iterations from 1); the returned function maps each `Progress` to one
    whose ``level`` / ``n_levels`` span both, and says the stage's measure.
    """
    state = {"stage": 0, "last": 0, "levels": None}

    def remap(info):
        if info.total_iterations < state["last"]:  # a new registration: the polish
            state["stage"] += 1
        state["last"] = info.total_iterations
        if state["levels"] is None:
            state["levels"] = info.n_levels
        if not polished:
            return info, 0
        levels = state["levels"] + 1
        level = info.level if state["stage"] == 0 else levels - 1
        return dataclasses.replace(info, level=level, n_levels=levels), state["stage"]

    return remap
