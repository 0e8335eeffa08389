"""The learned similarity in registration: a `Measure` from a model file, and learned + polish registration.

`LearnedSimilarity` plugs into the similarity plug point
(`DiffRegLogic.similarity.measure`): called as ``(drr, xray, mask) -> (B,)``
it returns ``1 - s`` with ``s = d^2(e(drr), e(xray)) / K`` the learned
distance per group (`similarity_trainer`), and ``residual`` returns r (B, M)
with ``||r||^2 = s`` = 1 - similarity, so Levenberg-Marquardt runs on it;
its Jacobian is the network's (forward-mode, `torch.func.jvp`) times the DRR
Jacobian (`drr.jacobian`), as for every residual. ``dtype = None``: the DRR
is compared in its own dtype, and the network runs in float32.

Images of any size go through `data.network_input` (resized to the
network's side, standardised) with the autograd graph kept. A mask (H, W)
in [0, 1] replaces the pixels it removes by the image's masked mean before
that, so they carry no structure. The X-ray's embedding is computed once
per X-ray and mask and kept (the optimiser asks for it at every step).

`register_learned`: registration on the learned similarity over the
pyramid, then (``polish``, default "zncc") one more registration at the
finest level with an image similarity from the learned result (ProST
switches to gradient NCC at the end; here the polish measure is a choice).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume
from . import checkpoint as ckpt
from . import so4
from .data import network_input
from .similarity_net import SimilarityNet

__all__ = ["LearnedSimilarity", "load_similarity", "register_learned", "POLISH_DEFAULT", "POLISH_LEVELS"]

POLISH_DEFAULT = "zncc"
"""The image similarity of the final polish (None / "none": no polish)."""
POLISH_LEVELS = (1.0,)
"""The pyramid of the polish: the full-size detector only (ProST's switch to an image similarity at the end)."""
_HINT = "train one with `diffreg train --kind similarity --ct CT --geometry G.json --out SIM.pt`"


class LearnedSimilarity:
    """A learned similarity as a registration measure (module docstring). ``info``: what the model file says."""

    dtype = None
    name = "learned"

    def __init__(self, model: SimilarityNet, info: dict | None = None) -> None:
        if not isinstance(model, SimilarityNet):
            raise InputError(f"model must be a SimilarityNet, got {type(model).__name__}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.info = dict(info or {})
        self.config = model.config
        self._device = next(model.parameters()).device
        self._cache: dict = {}

    # ---- embeddings

    def _inputs(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = images if images.ndim == 3 else images[None]
        if mask is not None:
            m = torch.as_tensor(mask, device=x.device).to(x.dtype)
            m = m if m.ndim == 3 else m[None]
            total = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            mean = (x * m).sum(dim=(-2, -1), keepdim=True) / total
            x = x * m + (1 - m) * mean
        return network_input(x.to(self._device), self.config.image_size, differentiable=True)

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of images (B, H, W) or (H, W) (autograd kept to the images)."""
        return so4.embedding(self.model(self._inputs(images, mask)), self.config.embedding)

    def _xray_embedding(self, xray: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # keyed on the objects themselves and their in-place versions (the registration passes the same tensors
        # at every step; inside torch.func.jvp, which Levenberg-Marquardt uses, a tensor's storage cannot be read)
        versions = (xray._version, None if mask is None else mask._version)
        cached = self._cache.get("xray")
        if cached is not None and cached[0] is xray and cached[1] is mask and cached[2] == versions:
            return cached[3]
        with torch.no_grad():
            value = self.embed(xray.detach(), None if mask is None else mask.detach())
        self._cache = {"xray": (xray, mask, versions, value)}  # one X-ray (and mask) at a time
        return value

    def _pair(self, drr: torch.Tensor, xray: torch.Tensor, mask):
        if not isinstance(drr, torch.Tensor) or not drr.is_floating_point() or drr.ndim not in (2, 3):
            raise InputError(f"the learned similarity takes DRRs (B, H, W) or (H, W) of floats, got "
                             f"{tuple(drr.shape) if isinstance(drr, torch.Tensor) else type(drr).__name__}")
        if not isinstance(xray, torch.Tensor):
            xray = torch.as_tensor(xray)
        if mask is not None and not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(mask)
        n = drr.shape[0] if drr.ndim == 3 else 1
        if mask is not None:
            if mask.ndim == 3 and mask.shape[0] == 1:
                mask = mask[0]
            if mask.ndim not in (2, 3) or tuple(mask.shape[-2:]) != tuple(drr.shape[-2:]) \
                    or (mask.ndim == 3 and mask.shape[0] != n):
                raise InputError(f"the learned similarity takes a mask (H, W) or (B, H, W) matching the DRRs "
                                 f"{tuple(drr.shape)}, got {tuple(mask.shape)}")
        e_drr = self.embed(drr, mask)
        if xray.ndim == 2 and (mask is None or mask.ndim == 2):
            e_xray = self._xray_embedding(xray, mask)
        else:  # an X-ray per DRR, or a mask per DRR (robust weights, footprints): the X-ray under each row's mask
            rows = xray if xray.ndim == 3 else xray.expand(n, *xray.shape)
            with torch.no_grad():
                e_xray = self.embed(rows.detach(), None if mask is None else mask.detach())
        return e_drr, e_xray

    # ---- the measure

    def distance(self, drr: torch.Tensor, xray: torch.Tensor, mask=None) -> torch.Tensor:
        """The learned distance per group s (B,) (>= 0), in the DRR's dtype."""
        e_drr, e_xray = self._pair(drr, xray, mask)
        return (so4.distance_sq(e_drr, e_xray, self.config.embedding) / self.config.groups).to(drr.dtype)

    def __call__(self, drr: torch.Tensor, xray: torch.Tensor, mask=None) -> torch.Tensor:
        return 1.0 - self.distance(drr, xray, mask)

    def residual(self, drr: torch.Tensor, xray: torch.Tensor, mask=None) -> torch.Tensor:
        """r (B, M) with ||r||^2 = s = 1 - similarity (Levenberg-Marquardt)."""
        e_drr, e_xray = self._pair(drr, xray, mask)
        r = so4.residual(e_drr, e_xray, self.config.embedding) / self.config.groups ** 0.5
        return r.to(drr.dtype)


def load_similarity(path: str | os.PathLike, volume: Volume | None = None, detector: Detector | None = None, *,
                    device: str | torch.device = "cpu") -> LearnedSimilarity:
    """A `LearnedSimilarity` from a model file `diffreg train --kind similarity` wrote.

    Refuses (InputError) a missing, unreadable or corrupt file, a pose-network
    file, a newer format, and, when given, another CT (unless the model is
    patient-agnostic) or another detector (saying which fields differ).
    """
    from ..devices import resolve_device
    from .similarity_trainer import SimilarityTrainConfig

    data = ckpt.read_checkpoint(path, ckpt.SIMILARITY_FORMAT)
    try:
        config = SimilarityTrainConfig.from_dict(data["config"])
    except InputError as exc:
        raise InputError(f"model file {path} has a configuration this DiffReg cannot use ({exc}); {_HINT}") from None
    if volume is not None:
        ckpt.check_volume(data, volume, path)
    if detector is not None:
        ckpt.check_detector(data, detector, path)
    model = SimilarityNet(config.network)
    try:
        model.load_state_dict(data["weights"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model file {path}: the weights do not fit the network its config describes "
                         f"({reason[:200]}); the file is corrupt: {_HINT}") from None
    info = {"kind": "similarity", "path": str(path), "embedding": config.network.embedding,
            "groups": config.network.groups, "image_size": config.network.image_size,
            "agnostic": config.agnostic, "phantoms": config.phantoms, "step": int(data.get("step", 0)),
            "elapsed_s": float(data.get("elapsed_s", 0.0)), "complete": bool(data.get("complete", True)),
            "validation": dict(data.get("validation") or {}), "diffreg_version": data.get("diffreg_version")}
    return LearnedSimilarity(model.to(resolve_device(device)), info)


def _polish_name(polish) -> str | None:
    if polish is None or (isinstance(polish, str) and polish.lower() == "none"):
        return None
    from ..similarity.registry import SIMILARITIES

    if polish not in SIMILARITIES:
        raise InputError(f"unknown polish similarity {polish!r}; choose none or one of {', '.join(sorted(SIMILARITIES))}")
    return polish


def register_learned(volume: Volume, xray, detector: Detector, initial_pose, options, similarity: LearnedSimilarity,
                     *, polish: str | None = POLISH_DEFAULT, polish_levels=POLISH_LEVELS, mask=None,
                     callback: Callable | None = None, cancel: Callable[[], bool] | None = None):
    """Register on the learned ``similarity``, then polish with an image similarity.

    ``options`` (`RegistrationOptions` or None): its ``similarity`` is
    replaced by the learned one for the first stage (its levels, starts,
    search and optimiser as given); the polish stage keeps the optimiser and
    engine settings with ``similarity = polish``, one start, no search and
    the pyramid ``polish_levels`` (default `POLISH_LEVELS`: the full size
    only). Returns the final `RegistrationResult`:

    * ``pose``, ``similarity``, ``converged``, ``stop_reason``: the polish's;
    * ``initial_pose``: the first stage's start; ``initial_similarity``: the
      polish measure at that start (so "initial -> final" is one measure);
    * ``iterations``, ``evaluations``, ``seconds``: sums of both stages;
      ``trace``: both, each entry with its ``stage``; ``iterations_per_level``: both;
    * ``options``: the learned stage's, with ``similarity = "learned"`` and the
      polish's under ``polish``;
    * ``stages``: one dict per stage (similarity, pose, initial and final
      value in its own measure, iterations, seconds, stop reason).

    ``polish=None`` or ``"none"`` returns the learned stage as it is (with
    ``stages``). A cancel during the learned stage returns its result (no polish).
    """
    from ..registration import register
    from ..registration.options import as_options, make_options

    if not isinstance(similarity, LearnedSimilarity):
        raise InputError(f"similarity must be a LearnedSimilarity (load_similarity), got {type(similarity).__name__}")
    polish = _polish_name(polish)
    opts = as_options(options)
    learned_opts = make_options(opts, similarity=similarity)
    polish_opts = None if polish is None else make_options(opts, similarity=polish, levels=tuple(polish_levels),
                                                           n_starts=1, search="local")
    learned = register(volume, xray, detector, initial_pose, learned_opts, mask=mask, callback=callback,
                       cancel=cancel)
    summary = dict(learned.options, similarity="learned")
    stages = [_stage("learned", learned)]
    if polish is None or learned.cancelled:
        learned = dataclasses.replace(learned, options=summary)
        learned.stages = stages
        return learned
    final = register(volume, xray, detector, learned.pose, polish_opts, mask=mask, callback=callback, cancel=cancel)
    stages.append(_stage(polish, final))
    start_value = _score(volume, xray, detector, learned.initial_pose, polish_opts, mask)
    trace = [dict(e, stage="learned") for e in learned.trace] + [dict(e, stage=polish) for e in final.trace]
    final = dataclasses.replace(
        final, initial_pose=learned.initial_pose, initial_similarity=start_value,
        seconds=learned.seconds + final.seconds, iterations=learned.iterations + final.iterations,
        evaluations=learned.evaluations + final.evaluations, trace=trace,
        iterations_per_level=list(learned.iterations_per_level) + list(final.iterations_per_level),
        options=dict(summary, polish=final.options))
    final.stages = stages
    return final


def _score(volume: Volume, xray, detector: Detector, pose: torch.Tensor, options, mask) -> float:
    """The polish measure between the X-ray and the DRR at ``pose`` on the full-size detector."""
    from ..drr.rendering import render
    from ..similarity.measure import as_measure

    image = getattr(xray, "image", xray)
    weights = mask if mask is not None else getattr(xray, "mask", None)
    measure = as_measure(options.similarity)
    dtype = measure.dtype or volume.mu.dtype
    with torch.no_grad():
        drr = render(volume, detector, pose.to(torch.float64)[None], options.renderer, **options.render_options())
        image = torch.as_tensor(image).to(drr.device)
        weights = None if weights is None else torch.as_tensor(weights).to(drr.device)
        return float(measure(drr.to(dtype), image.to(dtype), weights)[0])


def _stage(name: str, result) -> dict:
    return {"similarity": name, "camera_from_world": result.pose.tolist(), "similarity_value": result.similarity,
            "initial_similarity": result.initial_similarity, "iterations": result.iterations,
            "seconds": result.seconds, "converged": result.converged, "stop_reason": result.stop_reason}
