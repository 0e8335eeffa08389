"""Global search for wide starts: many candidate poses scored on a coarse level, the best few kept.

``wide_search(volume, image, detector, mask, start_pose, options, measure)``
finds pose hypotheses for a start that may be far from the answer (the seed
paper's +-45 deg / +-60 mm), without a trained model:

1. a **search level**: the detector downsampled to at most `SEARCH_SIDE_PX`
   pixels per side (never finer than the registration's coarsest level), the
   X-ray and mask area-averaged to it and the CT averaged to its pixel size
   (`pyramid.build_level`); a DRR there costs ~0.1-0.3 ms on one CPU core;
2. **candidates**: ``search_candidates`` rigid motions of the CT about its
   centre applied to the start (`geometry.motions.perturb_pose`, the
   registration's convention): the start itself (row 0), then a scrambled,
   seeded Sobol design (`torch.quasirandom.SobolEngine`, seed
   ``options.seed``) filling the box where each rotation-vector component is
   in +-``search_rotation_deg`` and each translation component in
   +-``search_translation_mm`` (`search_motions`): ``method="sobol"``. The
   default, ``method="cma"`` (`DEFAULT_METHOD`), spends the same number of
   renders on CMA-ES from the start instead (sigma = half the box, the
   ``cma`` package) and keeps every pose it evaluated: on the phantom and a
   chest CT its best pose was within 10 mm of the answer from 37 of 40 wide
   starts, the Sobol design's from 12 (docs/search.md);
3. each candidate is scored with ``measure`` in batches without gradients,
   the batch bounded by ``options.max_memory_mb``; a candidate that puts the
   CT centre behind the source or beyond the detector, or whose similarity is
   not finite, scores -inf;
4. the best ``search_keep`` **distinct** candidates are kept: walking down
   the scores, a candidate is dropped when it is within `DUPLICATE_FRACTION`
   of the search range (rotation angle and CT-centre shift) of one already
   kept (non-maximum suppression in pose space);
5. optional **polish**: ``polish_iterations`` Adam steps of the registration's
   own level optimiser on the kept poses at the search level, then the
   suppression again (`POLISH_ITERATIONS`: 20 for the Sobol design, none
   after CMA-ES).

The result's poses go on to a multi-start registration
(`engine.register_batch` with ``select_best=True``), which is what
``options.search = "wide"`` does inside `engine.register`;
`search_then_register` does the same for one start outside the engine.
docs/search.md has the measurements behind the defaults.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose
from ..geometry.rigid import check_pose
from ..limits import MIN_DETECTOR_SIDE_REGISTRATION, check_number
from ..similarity.measure import Measure, as_measure
from ..volume.ct import Volume
from .checks import check_detector, check_inputs, check_start, check_volume
from .context import RegistrationContext
from .options import RegistrationOptions, as_options
from .parameters import PoseParameters, source_to_center
from .pyramid import Level, build_level

SEARCH_SIDE_PX = 32
"""Largest side (pixels) of the search level's detector (measured: docs/search.md)."""
DUPLICATE_FRACTION = 0.25
"""Two candidates are near-duplicates when both their rotation difference is below this fraction of
``search_rotation_deg`` and their CT centres lie closer than this fraction of ``search_translation_mm``."""
POLISH_ITERATIONS = {"sobol": 20, "cma": 0}
"""Default Adam steps on the kept candidates at the search level per method (0 = no polish; docs/search.md)."""
MAX_POLISH_ITERATIONS = 1000
"""Largest ``polish_iterations``."""
SEARCH_BATCH = 256
"""Most candidates rendered in one call (fewer when ``max_memory_mb`` asks for it)."""
BYTES_PER_PIXEL = 96
"""Working bytes per candidate pixel while scoring: the DRR, its float64 copy and the similarity's temporaries."""
METHODS = ("sobol", "cma")
"""How candidates are drawn: a Sobol design over the box, or CMA-ES from the start."""
DEFAULT_METHOD = "cma"
"""The method `wide_search` uses unless told (measured better: docs/search.md); "sobol" when the optional
``cma`` package is not installed."""
CMA_POPULATION = 32
"""CMA-ES population per generation (``method="cma"``)."""


@dataclass
class SearchResult:
    """What `wide_search` found.

    ``poses`` (K, 4, 4) float64 camera_from_world of the kept candidates, best
    first; ``similarities`` (K,) float64 their similarity at the search level;
    ``candidates`` poses scored; ``seconds`` wall time; ``info`` JSON-ready
    details (method, candidates, kept, search level size, polish, best and
    start similarity, ranges, seed, seconds).
    """

    poses: torch.Tensor
    similarities: torch.Tensor
    candidates: int
    seconds: float
    info: dict = field(default_factory=dict)


def search_motions(n: int, rotation_deg: float, translation_mm: float, seed: int) -> torch.Tensor:
    """The candidate motions (n, 6) float64: rotation vector (rad) then translation (mm), row 0 = the start.

    Rows 1..n-1 are the first n-1 points of a scrambled Sobol sequence in
    [0, 1)^6 seeded with ``seed``, mapped to [-1, 1) and scaled by
    (rotation_deg in rad, x3; translation_mm, x3), as in `random_motions`.
    """
    n = check_number("search_candidates", n, 1, None, integer=True)
    rotation_deg = check_number("search_rotation_deg", rotation_deg, 0.0, 180.0, unit="deg")
    translation_mm = check_number("search_translation_mm", translation_mm, 0.0, None, unit="mm")
    seed = check_number("seed", seed, 0, 2**63 - 1, integer=True)
    out = torch.zeros(n, 6, dtype=torch.float64)
    if n > 1:
        engine = torch.quasirandom.SobolEngine(6, scramble=True, seed=seed)
        out[1:] = engine.draw(n - 1, dtype=torch.float64) * 2 - 1
    scale = torch.tensor([math.radians(rotation_deg)] * 3 + [translation_mm] * 3, dtype=torch.float64)
    return out * scale


def search_level(volume: Volume, image: torch.Tensor, detector: Detector, mask: torch.Tensor | None,
                 start_pose: torch.Tensor, coarsest_factor: float, side: int = SEARCH_SIDE_PX) -> Level:
    """The level candidates are scored on: at most ``side`` pixels per side, not finer than ``coarsest_factor``.

    Never smaller than `MIN_DETECTOR_SIDE_REGISTRATION` pixels per side (a
    detector already that small is used as it is).
    """
    longest, shortest = max(detector.shape), min(detector.shape)
    factor = max(1.0, float(coarsest_factor), longest / float(side))
    factor = min(factor, max(1.0, shortest / MIN_DETECTOR_SIDE_REGISTRATION))
    center = volume.center.to(torch.float64).cpu()
    return build_level(volume, detector, factor, source_to_center(start_pose, center), image, mask)


def wide_search(volume: Volume, image, detector: Detector, mask, start_pose, options: RegistrationOptions,
                measure, *, method: str | None = None, side: int = SEARCH_SIDE_PX,
                polish_iterations: int | None = None) -> SearchResult:
    """Score many poses around ``start_pose`` on a coarse level; return the best distinct ones (module docstring).

    Args:
        volume: the CT (float32 or float64 mu).
        image: (H, W) X-ray in the line-integral convention (bone bright), on ``detector``.
        detector: the X-ray's detector.
        mask: (H, W) weights in [0, 1] or None.
        start_pose: (4, 4) camera_from_world (mm) the search is centred on.
        options: `RegistrationOptions`; used: search_rotation_deg, search_translation_mm,
            search_candidates, search_keep, seed, renderer, render_options(), levels (the
            coarsest factor), optimizer steps (polish), max_memory_mb, footprint_mask (candidates are
            scored within the CT's footprint at each, as the registration compares).
        measure: a `Measure` (or anything `as_measure` takes): higher = more similar.
        method: "sobol" (the design of `search_motions`) or "cma" (CMA-ES from the start); None =
            `DEFAULT_METHOD` (``cma`` is a dependency of DiffReg, so the default is the same everywhere).
        side: largest side (pixels) of the search level (>= `MIN_DETECTOR_SIDE_REGISTRATION`).
        polish_iterations: Adam steps on the kept poses at the search level (0 = none; None =
            `POLISH_ITERATIONS` of the method).

    Returns:
        `SearchResult` with K = min(search_keep, distinct candidates) poses, best first.
    """
    t0 = time.perf_counter()
    opts = as_options(options)
    check_volume(volume)
    check_detector(detector)
    measure = as_measure(measure)
    if method is None:
        method = DEFAULT_METHOD
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")
    side = check_number("side", side, MIN_DETECTOR_SIDE_REGISTRATION, None, integer=True, unit="px")
    if polish_iterations is None:
        polish_iterations = POLISH_ITERATIONS[method]
    polish_iterations = check_number("polish_iterations", polish_iterations, 0, MAX_POLISH_ITERATIONS, integer=True)
    dtype = measure.dtype or volume.mu.dtype
    image, mask = check_inputs(volume, image, detector, mask, dtype)
    start = check_pose(start_pose, name="start pose").detach().to(torch.float64).cpu()
    if start.ndim == 3:
        if start.shape[0] != 1:
            raise InputError(f"wide_search takes one start pose (4, 4), got a batch of shape {tuple(start.shape)}")
        start = start[0]
    check_start(volume, detector, start, "the start pose of the search")
    level = search_level(volume, image, detector, mask, start, opts.levels[0], side)
    center = volume.center.to(torch.float64).cpu()
    scorer = _Scorer(level, opts, measure, dtype, center)

    if method == "sobol":
        motions = search_motions(opts.search_candidates, opts.search_rotation_deg, opts.search_translation_mm,
                                 opts.seed)
        poses = perturb_pose(start, motions, center)
        scores = scorer(poses)
    else:
        poses, scores = _cma_candidates(scorer, start, center, opts)
    start_similarity = float(scores[0])
    keep = _distinct(poses, scores, center, opts, opts.search_keep)
    kept_poses, kept_scores = poses[keep], scores[keep]
    if polish_iterations > 0 and torch.isfinite(kept_scores).any():
        kept_poses, kept_scores = _polish(level, kept_poses[torch.isfinite(kept_scores)], start, center, opts,
                                          measure, dtype, polish_iterations)
        keep = _distinct(kept_poses, kept_scores, center, opts, opts.search_keep)
        kept_poses, kept_scores = kept_poses[keep], kept_scores[keep]
    finite = torch.isfinite(kept_scores)
    if not bool(finite.any()):
        raise InputError(
            f"no candidate pose of the search within +-{opts.search_rotation_deg:g} deg / "
            f"+-{opts.search_translation_mm:g} mm of the start can be scored (each puts the CT behind the source "
            "or beyond the detector, or its similarity is not finite); check the start pose and the detector, "
            "or narrow search_rotation_deg / search_translation_mm"
        )
    kept_poses, kept_scores = kept_poses[finite], kept_scores[finite]
    seconds = time.perf_counter() - t0
    info = {
        "method": method, "candidates": int(scorer.count), "kept": int(kept_poses.shape[0]),
        "search_level_px": list(level.detector.shape), "search_level_factor": float(level.factor),
        "polish_iterations": int(polish_iterations), "rotation_deg": float(opts.search_rotation_deg),
        "translation_mm": float(opts.search_translation_mm), "seed": int(opts.seed),
        "start_similarity": start_similarity if math.isfinite(start_similarity) else None,
        "best_similarity": float(kept_scores[0]), "similarities": [float(s) for s in kept_scores],
        "seconds": round(seconds, 4),
    }
    return SearchResult(kept_poses, kept_scores, int(scorer.count), seconds, info)


class _Scorer:
    """Scores poses (N, 4, 4) on the search level in memory-bounded batches, no gradients; counts them."""

    def __init__(self, level: Level, opts: RegistrationOptions, measure: Measure, dtype: torch.dtype,
                 center: torch.Tensor) -> None:
        from ..drr.rendering import render

        self.render, self.level, self.opts, self.measure, self.dtype = render, level, opts, measure, dtype
        self.center = center
        self.count = 0
        pixels = level.detector.rows * level.detector.cols
        self.batch = int(max(1, min(SEARCH_BATCH, opts.max_memory_mb * 2**20 // (pixels * BYTES_PER_PIXEL))))

    def __call__(self, poses: torch.Tensor) -> torch.Tensor:
        """(N,) float64 similarities; -inf where the CT centre is not between source and detector or not finite."""
        depth = poses[:, 2, :3] @ self.center + poses[:, 2, 3]
        valid = (depth > 0) & (depth < float(self.level.detector.sdd))
        out = torch.full((poses.shape[0],), -math.inf, dtype=torch.float64)
        rows = torch.nonzero(valid).flatten()
        device = self.level.volume.mu.device
        with torch.no_grad():
            for i in range(0, rows.numel(), self.batch):
                idx = rows[i:i + self.batch]
                batch = poses[idx].to(device)
                drr = self.render(self.level.volume, self.level.detector, batch, self.opts.renderer,
                                  **self.opts.render_options())
                mask = self.level.mask
                if self.opts.footprint_mask:  # as the registration compares: within the CT's footprint at each pose
                    from ..drr.footprint import footprint_mask, masked_by_footprint

                    mask = masked_by_footprint(mask, footprint_mask(self.level.volume, self.level.detector, batch,
                                                                    exclude_cut_faces=True).to(self.dtype))
                    seen = (mask.flatten(1) > 0).any(1).cpu()  # a pose whose footprint misses every pixel: -inf
                    idx, drr, mask = idx[seen], drr[seen.to(drr.device)], mask[seen.to(mask.device)]
                    if idx.numel() == 0:
                        continue
                sims = self.measure(drr.to(self.dtype), self.level.xray, mask)
                out[idx] = sims.detach().to(torch.float64).cpu()
        self.count += poses.shape[0]
        return torch.where(torch.isfinite(out), out, torch.full_like(out, -math.inf))


def _distinct(poses: torch.Tensor, scores: torch.Tensor, center: torch.Tensor, opts: RegistrationOptions,
              keep: int) -> torch.Tensor:
    """Indices of up to ``keep`` best poses, none within `DUPLICATE_FRACTION` of the range of a better kept one.

    Distance of two poses: the rotation angle between them (deg) and the
    distance between the CT centre's camera coordinates (mm). Finite scores
    first; -inf candidates only when nothing else is left.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    rot_limit = DUPLICATE_FRACTION * float(opts.search_rotation_deg)
    trans_limit = DUPLICATE_FRACTION * float(opts.search_translation_mm)
    rotations = poses[:, :3, :3]
    centres = poses[:, :3, :3] @ center + poses[:, :3, 3]
    kept: list[int] = []
    for i in order.tolist():
        if len(kept) >= keep:
            break
        if kept:
            k = torch.tensor(kept)
            relative = rotations[k].transpose(-1, -2) @ rotations[i]
            cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
            angle = torch.rad2deg(torch.arccos(cos))
            shift = (centres[k] - centres[i]).norm(dim=-1)
            if bool(((angle <= rot_limit) & (shift <= trans_limit)).any()):
                continue
        kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def _polish(level: Level, poses: torch.Tensor, start: torch.Tensor, center: torch.Tensor,
            opts: RegistrationOptions, measure: Measure, dtype: torch.dtype,
            iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A few Adam steps of the registration's gradient level on poses (K, 4, 4) at the search level."""
    import dataclasses

    from .levels import ADAM

    polish_opts = dataclasses.replace(opts, max_iterations=iterations)
    params = PoseParameters("se3", start, center, float(level.detector.sdd))
    ctx = RegistrationContext(polish_opts, params, measure, dtype, None, None, 1)
    x_dtype = torch.promote_types(level.volume.mu.dtype, torch.float32)
    x = params.params(poses).to(dtype=x_dtype, device=level.volume.mu.device)
    rot, trans = opts.steps() if opts.optimizer == "adam" else (1.0, 2.0)
    base = torch.tensor([math.radians(rot)] * 3 + [trans] * 3, dtype=x.dtype, device=x.device)
    steps = (base * (level.factor / opts.levels[0])).expand(x.shape[0], 6).clone()
    out = ADAM.run(ctx, level, 0, x, steps)
    polished = params.pose(out.x.detach().to(torch.float64).cpu())
    return polished, out.similarity.detach().to(torch.float64).cpu()


def _cma_candidates(scorer: _Scorer, start: torch.Tensor, center: torch.Tensor,
                    opts: RegistrationOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """CMA-ES from the start in units of the search box (sigma 0.5), ``search_candidates`` renders in all.

    Returns every evaluated pose (N, 4, 4), the start first, and its similarity (N,).
    """
    try:
        import cma
    except ImportError as exc:
        raise InputError("the CMA-ES search needs the cma package (a dependency of DiffReg): pip install "
                         "'cma>=3.3', or use method='sobol'") from exc
    scale = torch.tensor([math.radians(opts.search_rotation_deg)] * 3 + [opts.search_translation_mm] * 3,
                         dtype=torch.float64)
    poses = [start[None]]
    scores = [scorer(start[None])]
    budget = opts.search_candidates - 1
    es = cma.CMAEvolutionStrategy(np.zeros(6), 0.5, {"seed": opts.seed % (2**32 - 1) + 1, "verbose": -9,
                                                     "popsize": CMA_POPULATION, "bounds": [-1.5, 1.5]})
    while budget > 0:
        population = np.array(es.ask())[:budget]
        z = torch.as_tensor(population, dtype=torch.float64)
        batch_poses = perturb_pose(start, z * scale, center)
        sims = scorer(batch_poses)
        poses.append(batch_poses)
        scores.append(sims)
        budget -= len(population)
        if len(population) < CMA_POPULATION:
            break
        finite = torch.where(torch.isfinite(sims), sims, torch.full_like(sims, -2.0))
        es.tell(list(population), (-finite).tolist())
        if es.stop():
            es = cma.CMAEvolutionStrategy(np.zeros(6), 0.5, {"seed": int(es.countiter) + 1, "verbose": -9,
                                                             "popsize": CMA_POPULATION, "bounds": [-1.5, 1.5]})
    return torch.cat(poses), torch.cat(scores)


def search_then_register(volume: Volume, xray, detector: Detector, start_pose, options: RegistrationOptions,
                         *, mask=None, **search_kwargs):
    """`wide_search` from ``start_pose``, then `engine.register_batch` from its poses with ``select_best``.

    What ``options.search = "wide"`` does inside `engine.register`, for
    callers that want it outside the engine (experiments, tests).
    ``xray`` is an (H, W) image or an `XRay`. Returns
    ``(RegistrationResult, SearchResult)``; the result's ``seconds`` cover
    the registration only (add ``search.seconds``).
    """
    from ..xray.image import XRay
    from .engine import configured_measure, register_batch

    opts = as_options(options)
    image = xray.image if isinstance(xray, XRay) else xray
    if isinstance(xray, XRay) and mask is None:
        mask = xray.mask
    found = wide_search(volume, image, detector, mask, start_pose, opts, configured_measure(opts), **search_kwargs)
    start = check_pose(start_pose, name="start pose").to(torch.float64).cpu().reshape(4, 4)
    result = register_batch(volume, image, detector, found.poses, opts, mask=mask, select_best=True,
                            reference_pose=start)[0]
    return result, found
