"""2D/3D rigid registration: find the CT pose whose DRR matches the X-ray.

``register(volume, xray, detector, initial_pose)`` optimises the pose
(camera_from_world) so that the DRR of ``volume`` on ``detector`` is most
similar to ``xray``:

* **Parameters**: by default SE(3) exponential coordinates of a motion of
  the CT about its centre, ``pose = initial @ T(c) exp(xi) T(-c)`` with
  ``xi = (omega [rad], v [mm])``; or the seed paper's spherical C-arm model
  ``(theta, phi, gamma [rad], bx, by, bz [mm])`` (``parameterization="spherical"``).
* **Coarse to fine**: each level renders a detector downsampled by the
  level's factor (same physical extent), compares with the X-ray
  area-averaged to that size, and uses a CT averaged so that its voxels are
  about as large as a detector pixel seen at the isocentre. Step sizes
  shrink with the pixel size.
* **Optimisers**: ``gd``, ``gdm``, ``gddm``, ``adam`` (gradient of the loss
  ``-similarity`` by autograd), ``lm`` (Levenberg-Marquardt on the
  similarity's residual vector, Jacobian from `drr.jacobian`), and the
  gradient-free baselines ``powell``, ``nelder-mead`` (scipy) and ``cma``
  (CMA-ES, the ``cma`` package).
* **Stopping** (gradient methods): when the best similarity of a level has
  not improved by ``tolerance`` for ``patience`` iterations, the step sizes
  are halved and the search restarts from the best pose; after
  ``max_step_reductions`` halvings the level has *converged*. Otherwise the
  level stops at ``max_iterations``. Levenberg-Marquardt converges when an
  accepted step is below ``min_step_deg`` / ``min_step_mm``, or after
  ``patience`` rejected steps in a row.
* The best pose seen is kept. ``converged`` in the result means the finest
  level stopped by its convergence test, not by the iteration cap or a
  cancel. It says the optimiser settled, not that the pose is right: a
  wrong local optimum also converges. The final similarity is the signal
  for that (see the README's robustness table for how the two relate).
* Multi-start: ``n_starts > 1`` adds random starts around the initial pose
  (seeded), runs them together as a batch at the coarsest level and goes on
  from the best.
* ``callback(progress)`` is called after every iteration with a
  `Progress`; returning True (or ``cancel()`` returning True) stops the
  registration, which then returns the best pose so far with
  ``cancelled=True``.

Everything runs on the device and dtype of ``volume.mu``. Results are
deterministic for a given seed on the CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry
from .drr import render
from .drr.jacobian import render_with_jacobian
from .errors import InputError
from .geometry import Detector
from .optimizers import GRADIENT_OPTIMIZERS, OPTIMIZERS, LevenbergMarquardt, make_gradient_optimizer
from .similarity import get_residual, get_similarity
from .volume import Volume, downsample_cached
from .xray import check_xray

PARAMETERIZATIONS = ("se3", "spherical")

# Default step sizes at the coarsest level (rotation deg, translation mm) per
# optimiser. Adam's step is about this size; the plain gradient methods
# multiply the gradient of -similarity (per rad and per mm) by it, so their
# values are in deg^2 and mm^2 per unit of similarity. Chosen on the
# phantom (see the README's robustness experiment).
DEFAULT_STEPS = {
    "adam": (1.0, 2.0),
    "gd": (6.0, 150.0),
    "gdm": (0.6, 15.0),
    "gddm": (6.0, 150.0),
}
# One unit of the gradient-free optimisers' search space (rotation deg, translation mm).
BASELINE_SCALE = (5.0, 10.0)
SIMILARITY_DTYPE = torch.float64  # DRRs are compared with the X-ray in float64 (see _check_inputs)


@dataclass
class RegistrationOptions:
    """Settings of one registration (defaults: Adam on negative ZNCC, Siddon, 4 levels: 1/8, 1/4, 1/2, full size)."""

    optimizer: str = "adam"
    similarity: str = "zncc"
    renderer: str = "siddon"
    parameterization: str = "se3"
    levels: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
    max_iterations: int = 150
    step_rotation_deg: float | None = None
    step_translation_mm: float | None = None
    momentum: float = 0.9
    patience: int = 5
    tolerance: float = 1e-4
    max_step_reductions: int = 2
    min_step_deg: float = 0.01
    min_step_mm: float = 0.01
    max_evaluations: int = 1000
    n_starts: int = 1
    start_rotation_deg: float = 10.0
    start_translation_mm: float = 20.0
    seed: int = 0
    step_voxels: float = 1.0
    max_memory_mb: float = 2048.0
    backend: str = "auto"  # renderer backend: auto | fused (CPU, numba) | triton (CUDA) | reference (PyTorch)

    def validate(self) -> None:
        from .drr import BACKENDS

        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimiser {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        get_similarity(self.similarity)
        if self.optimizer == "lm":
            get_residual(self.similarity)
        if self.parameterization not in PARAMETERIZATIONS:
            raise InputError(f"unknown parameterization {self.parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if not self.levels or any(not (f >= 1) for f in self.levels):
            raise InputError(f"levels must be downsampling factors >= 1 (coarse to fine), got {self.levels}")
        for name in ("max_iterations", "patience", "max_evaluations", "n_starts"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("step_rotation_deg", "step_translation_mm"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise InputError(f"{name} must be positive, got {value}")

    def steps(self) -> tuple[float, float]:
        """(rotation deg, translation mm) step sizes at the coarsest level."""
        rot, trans = DEFAULT_STEPS.get(self.optimizer, (1.0, 2.0))
        return (self.step_rotation_deg or rot, self.step_translation_mm or trans)


@dataclass
class Progress:
    """What the callback sees after each iteration."""

    level: int
    n_levels: int
    iteration: int
    total_iterations: int
    similarity: float  # best similarity of the current level so far (best start)
    current_similarity: float
    elapsed: float
    pose: torch.Tensor | None = None  # camera_from_world (4, 4) float64 of that best similarity (CPU)


@dataclass
class RegistrationResult:
    """Outcome of one registration; ``pose`` is camera_from_world (4, 4) float64."""

    pose: torch.Tensor
    initial_pose: torch.Tensor
    similarity: float
    initial_similarity: float
    iterations: int
    evaluations: int
    seconds: float
    converged: bool
    stop_reason: str
    cancelled: bool = False
    iterations_per_level: list[int] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (the trace included)."""
        return {
            "camera_from_world": self.pose.tolist(),
            "initial_camera_from_world": self.initial_pose.tolist(),
            "similarity": self.similarity,
            "initial_similarity": self.initial_similarity,
            "iterations": self.iterations,
            "iterations_per_level": self.iterations_per_level,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "cancelled": self.cancelled,
            "options": self.options,
            "trace": self.trace,
        }


class _Cancelled(Exception):
    pass


# --------------------------------------------------------------------------
# Parameterisation
# --------------------------------------------------------------------------


class PoseParameters:
    """Maps parameters (B, 6) to camera_from_world (B, 4, 4) and back."""

    def __init__(self, kind: str, reference: torch.Tensor, center: torch.Tensor, sdd: float) -> None:
        self.kind, self.reference, self.center, self.sdd = kind, reference, center, float(sdd)
        source = -(reference[:3, :3].T @ reference[:3, 3])
        self.radius = float((source - center).norm())

    def pose(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "se3":
            return geometry.pose_from_se3_about(self.reference.to(x.dtype), x, self.center.to(x.dtype))
        return geometry.spherical_carm_to_pose(x, self.sdd, self.center.to(x.dtype), radius=self.radius)

    def params(self, pose: torch.Tensor) -> torch.Tensor:
        if self.kind == "se3":
            return geometry.se3_about_from_pose(self.reference, pose, self.center)
        return geometry.pose_to_spherical_carm(pose, self.sdd, self.center, radius=self.radius)


def random_motions(n: int, max_rotation_deg: float, max_translation_mm: float, seed: int,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n rigid motions (n, 3 + 3): rotation vectors (rad) and translations (mm), each component uniform.

    The rotation vector's components are uniform in +-max_rotation_deg and
    the translation's in +-max_translation_mm (the seed paper's sampling of
    starting poses). Seeded and independent of the global RNG.
    """
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, 6, generator=gen, dtype=dtype) * 2 - 1
    scale = torch.tensor([math.radians(max_rotation_deg)] * 3 + [max_translation_mm] * 3, dtype=dtype)
    return u * scale


def perturb_pose(pose: torch.Tensor, motions: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``pose @ T(c) [R(omega) t] T(-c)`` for motions (n, 6) -> (n, 4, 4): the CT rotated about its centre and shifted."""
    rot = geometry.so3_exp(motions[:, :3])
    return pose @ geometry.motion_about_center(rot, motions[:, 3:], center)


# --------------------------------------------------------------------------
# Levels
# --------------------------------------------------------------------------


@dataclass
class _Level:
    factor: float
    volume: Volume
    detector: Detector
    xray: torch.Tensor
    mask: torch.Tensor | None


def volume_factor(volume: Volume, detector: Detector, source_to_center: float) -> tuple[float, float, float]:
    """Per-axis CT downsampling so voxels are about the detector pixel size at the isocentre (never finer than the CT)."""
    pixel_at_iso = min(float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])) * source_to_center / float(detector.sdd)
    return tuple(max(1.0, math.floor(pixel_at_iso / float(s))) for s in volume.spacing)


def _levels(volume: Volume, xray: torch.Tensor, detector: Detector, mask: torch.Tensor | None, factors,
            source_to_center: float) -> list[_Level]:
    levels = []
    for factor in factors:
        det = detector.downsample(factor) if factor > 1 else detector
        if det.shape == tuple(xray.shape):
            xr, mk = xray, mask
        else:
            xr = F.interpolate(xray[None, None], size=det.shape, mode="area")[0, 0]
            mk = None if mask is None else F.interpolate(mask[None, None].to(xray.dtype), size=det.shape, mode="area")[0, 0]
        vf = volume_factor(volume, det, source_to_center)
        levels.append(_Level(factor, downsample_cached(volume, vf), det, xr, mk))
    return levels


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _check_inputs(volume: Volume, xray, detector: Detector, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The X-ray and mask (float64 on the volume's device), checked against the detector.

    Similarities are computed in float64 whatever the volume's dtype: near
    the optimum 1 - ZNCC is ~1e-4 and float32 (resolution 6e-8 at 1) would
    leave the last improvements below its rounding.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    dtype, device = SIMILARITY_DTYPE, volume.mu.device
    check_xray(torch.as_tensor(xray), detector)
    xray = torch.as_tensor(xray).to(device=device, dtype=dtype)
    if mask is not None:
        mask = torch.as_tensor(mask).to(device=device)
        if tuple(mask.shape) != tuple(xray.shape):
            raise InputError(f"the mask is {tuple(mask.shape)} but the X-ray is {tuple(xray.shape)}")
        mask = mask.to(dtype)
        if not (mask > 0).any():
            raise InputError("the mask excludes every pixel of the X-ray")
    return xray, mask


def _check_start(volume: Volume, detector: Detector, pose: torch.Tensor) -> None:
    """Refuse a start pose (4, 4) that puts the CT centre behind the source or beyond the detector."""
    center = volume.center.to(torch.float64).cpu()
    depth = float(pose[2, :3] @ center + pose[2, 3])
    if depth <= 0:
        raise InputError(
            f"at the initial pose the CT centre is {-depth:.0f} mm behind the X-ray source (camera z <= 0); "
            "check the pose convention (camera_from_world, source at the origin looking along +z)"
        )
    if depth >= float(detector.sdd):
        raise InputError(
            f"at the initial pose the CT centre is {depth:.0f} mm from the source, beyond the detector "
            f"(SDD {float(detector.sdd):.0f} mm); check the pose and the source-to-detector distance"
        )


# --------------------------------------------------------------------------
# Optimisation of one level
# --------------------------------------------------------------------------


class _Run:
    """State shared by the levels of one (batched) registration."""

    def __init__(self, opts: RegistrationOptions, params: PoseParameters, callback, cancel, n_levels: int) -> None:
        self.opts, self.params = opts, params
        self.callback, self.cancel = callback, cancel
        self.n_levels = n_levels
        self.similarity = get_similarity(opts.similarity)
        self.trace: list[dict] = []
        self.iterations = 0
        self.evaluations = 0
        self.t0 = time.perf_counter()

    def render(self, level: _Level, x: torch.Tensor) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return render(level.volume, level.detector, self.params.pose(x), self.opts.renderer,
                      step_voxels=self.opts.step_voxels, max_memory_mb=self.opts.max_memory_mb,
                      backend=self.opts.backend).to(SIMILARITY_DTYPE)

    def score(self, level: _Level, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.similarity(self.render(level, x), level.xray, level.mask)

    def report(self, level_index: int, iteration: int, current: torch.Tensor, best: torch.Tensor, extra: dict,
               best_x: torch.Tensor) -> None:
        """Trace one iteration; tell the callback (with the best pose so far, ``best_x`` (B, 6)); raise on cancel."""
        self.iterations += 1
        elapsed = time.perf_counter() - self.t0
        entry = {"level": level_index, "iteration": iteration, "similarity": current.tolist(),
                 "best_similarity": best.tolist(), "seconds": round(elapsed, 4), **extra}
        self.trace.append(entry)
        stop = False
        if self.callback is not None:
            row = int(best.argmax())
            with torch.no_grad():
                pose = self.params.pose(best_x[row:row + 1].detach())[0].to(torch.float64).cpu()
            info = Progress(level_index, self.n_levels, iteration, self.iterations, float(best.max()),
                            float(current.max()), elapsed, pose)
            stop = bool(self.callback(info))
        if stop or (self.cancel is not None and self.cancel()):
            raise _Cancelled()


def _gradient_level(run: _Run, level: _Level, level_index: int, x: torch.Tensor, steps: torch.Tensor,
                    state: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    opts = run.opts
    n = x.shape[0]
    opt = make_gradient_optimizer(opts.optimizer, steps, opts.momentum)
    best_x, best = x.clone(), torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    since_best = torch.zeros(n, dtype=torch.long)
    reductions = torch.zeros(n, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    reasons = ["max_iterations"] * n
    state.update(best_x=best_x, best=best)
    for iteration in range(opts.max_iterations):
        xv = x.detach().requires_grad_(True)
        with torch.enable_grad():
            sim = run.similarity(run.render(level, xv), level.xray, level.mask)
            (grad,) = torch.autograd.grad(-sim.sum(), xv)
        sim = sim.detach()
        if not torch.isfinite(grad).all():
            raise FloatingPointError("the similarity gradient is not finite at this pose")
        better = sim > best
        significant = (sim > best + opts.tolerance).cpu()
        best_x = torch.where(better[:, None], x, best_x)
        best = torch.where(better, sim, best)
        since_best = torch.where(significant, torch.zeros_like(since_best), since_best + 1)
        plateau = (since_best >= opts.patience) & active.cpu()
        step_now = active.clone()
        if plateau.any():
            rows = plateau.to(x.device)
            reductions += plateau.long()
            opt.step_sizes[rows] *= 0.5
            opt.reset(rows)
            x = torch.where(rows[:, None], best_x, x)
            since_best[plateau] = 0
            step_now &= ~rows
            done = (reductions > opts.max_step_reductions).to(x.device) & active
            for i in torch.nonzero(done).flatten().tolist():
                reasons[i] = "converged"
            active &= ~done
        state.update(best_x=best_x, best=best)
        run.report(level_index, iteration, sim, best, {"step_scale": (opt.step_sizes[:, 0] / steps[:, 0]).tolist()},
                   best_x)
        if not active.any():
            break
        x = opt.step(x, grad, step_now)
    return best_x, best, reasons


def _residual_cost(residual: torch.Tensor) -> torch.Tensor:
    return (residual * residual).sum(-1)


def _residual_jacobian(residual_fn, drr: torch.Tensor, jac: torch.Tensor, level: _Level) -> torch.Tensor:
    """d residual / d params (B, M, P): the DRR Jacobian (B, H, W, P) pushed through the residual (one batched JVP)."""
    def push(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda a: residual_fn(a, level.xray, level.mask), (drr,), (tangent,))[1]

    return torch.stack([push(jac[..., p]) for p in range(jac.shape[-1])], -1)


def _lm_level(run: _Run, level: _Level, level_index: int, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    opts = run.opts
    residual_fn = get_residual(opts.similarity)
    n = x.shape[0]
    lm = LevenbergMarquardt(n, dtype=x.dtype, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    rejected = torch.zeros(n, dtype=torch.long, device=x.device)
    reasons = ["max_iterations"] * n
    min_rot, min_trans = math.radians(opts.min_step_deg), opts.min_step_mm
    drr, jac = render_with_jacobian(level.volume, level.detector, run.params.pose, x, opts.renderer,
                                    step_voxels=opts.step_voxels, max_memory_mb=opts.max_memory_mb,
                                    backend=opts.backend)
    drr, jac = drr.to(SIMILARITY_DTYPE), jac.to(SIMILARITY_DTYPE)
    run.evaluations += n
    res = residual_fn(drr, level.xray, level.mask)
    cost = _residual_cost(res)
    state.update(best_x=x.clone(), best=1.0 - cost)
    for iteration in range(opts.max_iterations):
        # Jacobian of the residual: chain the DRR Jacobian through the residual function (one JVP per parameter)
        j_res = _residual_jacobian(residual_fn, drr, jac, level)
        dx = lm.propose(res, j_res)
        dx = torch.where(active[:, None], dx, torch.zeros_like(dx))
        trial = x + dx
        with torch.no_grad():
            trial_res = residual_fn(run.render(level, trial), level.xray, level.mask)
        trial_cost = _residual_cost(trial_res)
        improved = (trial_cost < cost) & active
        lm.update(improved)
        rejected = torch.where(improved, torch.zeros_like(rejected), rejected + (active & ~improved).long())
        small = (dx[:, :3].norm(dim=-1) < min_rot) & (dx[:, 3:].norm(dim=-1) < min_trans) & improved
        x = torch.where(improved[:, None], trial, x)
        cost = torch.where(improved, trial_cost, cost)
        done = active & (small | (rejected >= opts.patience))
        for i in torch.nonzero(done).flatten().tolist():
            reasons[i] = "converged"
        active = active & ~done
        state.update(best_x=x.clone(), best=1.0 - cost)
        run.report(level_index, iteration, 1.0 - trial_cost, 1.0 - cost, {"damping": lm.damping.tolist()}, x)
        if not active.any():
            break
        if improved.any():
            drr, jac = render_with_jacobian(level.volume, level.detector, run.params.pose, x, opts.renderer,
                                            step_voxels=opts.step_voxels, max_memory_mb=opts.max_memory_mb,
                                            backend=opts.backend)
            drr, jac = drr.to(SIMILARITY_DTYPE), jac.to(SIMILARITY_DTYPE)
            run.evaluations += n
            res = residual_fn(drr, level.xray, level.mask)
    return x, 1.0 - cost, reasons


def _baseline_level(run: _Run, level: _Level, level_index: int, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Gradient-free optimisers, one start at a time, in units of BASELINE_SCALE."""
    opts = run.opts
    scale = torch.tensor([math.radians(BASELINE_SCALE[0])] * 3 + [BASELINE_SCALE[1]] * 3, dtype=x.dtype, device=x.device)
    xs, bests, reasons = [], [], []
    budget = opts.max_evaluations
    for row in range(x.shape[0]):
        x0 = x[row]
        counter = {"iteration": 0, "best": -math.inf, "best_z": np.zeros(6)}

        def objective_batch(zs: np.ndarray) -> np.ndarray:
            z = torch.as_tensor(np.atleast_2d(zs), dtype=x.dtype, device=x.device)
            sims = run.score(level, x0 + z * scale)
            for zi, s in zip(np.atleast_2d(zs), sims.tolist()):
                if s > counter["best"]:
                    counter["best"], counter["best_z"] = s, np.array(zi, dtype=np.float64)
            return -sims.cpu().numpy()

        def note() -> None:
            best = torch.tensor([counter["best"]], dtype=x.dtype)
            state.update(best_x=(x0 + torch.as_tensor(counter["best_z"], dtype=x.dtype, device=x.device) * scale)[None],
                         best=best)
            run.report(level_index, counter["iteration"], best, best, {}, state["best_x"])
            counter["iteration"] += 1

        reason = _run_baseline(opts, objective_batch, note, budget)
        reasons.append(reason)
        xs.append(x0 + torch.as_tensor(counter["best_z"], dtype=x.dtype, device=x.device) * scale)
        bests.append(counter["best"])
    return torch.stack(xs), torch.tensor(bests, dtype=x.dtype, device=x.device), reasons


def _run_baseline(opts: RegistrationOptions, objective_batch, note, budget: int) -> str:
    if opts.optimizer == "cma":
        try:
            import cma
        except ImportError as exc:
            raise InputError("the CMA-ES baseline needs the cma package: pip install 'diffreg[baselines]'") from exc
        es = cma.CMAEvolutionStrategy(np.zeros(6), 0.5, {"seed": opts.seed + 1, "maxfevals": budget, "verbose": -9,
                                                         "tolfun": opts.tolerance, "tolx": 1e-3})
        while not es.stop():
            population = es.ask()
            es.tell(population, list(objective_batch(np.array(population))))
            note()
        stop = es.stop()
        return "max_evaluations" if "maxfevals" in stop else "converged"
    try:
        from scipy.optimize import minimize
    except ImportError as exc:
        raise InputError(f"the {opts.optimizer} baseline needs scipy: pip install 'diffreg[baselines]'") from exc
    method = {"powell": "Powell", "nelder-mead": "Nelder-Mead"}[opts.optimizer]
    options = {"maxfev": budget, "xtol": 1e-3, "ftol": opts.tolerance}
    if method == "Nelder-Mead":
        options = {"maxfev": budget, "xatol": 1e-3, "fatol": opts.tolerance, "initial_simplex": np.vstack([np.zeros(6), 0.5 * np.eye(6)])}
    result = minimize(lambda z: float(objective_batch(z)[0]), np.zeros(6), method=method, options=options,
                      callback=lambda *args: note())
    return "converged" if result.success else "max_evaluations"


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def register_batch(
    volume: Volume,
    xray,
    detector: Detector,
    initial_poses: torch.Tensor,
    options: RegistrationOptions | None = None,
    *,
    mask=None,
    select_best: bool = False,
    callback: Callable[[Progress], bool | None] | None = None,
    cancel: Callable[[], bool] | None = None,
    reference_pose: torch.Tensor | None = None,
) -> list[RegistrationResult]:
    """Register from each of the initial poses (B, 4, 4) as one batch; one result per start.

    With ``select_best`` only the start with the highest similarity after
    the coarsest level goes on to the finer levels (multi-start), and a
    single result is returned. ``reference_pose`` is the pose the SE(3)
    parameters are taken about (default: the first start).
    """
    opts = options or RegistrationOptions()
    opts.validate()
    starts = geometry.check_pose(initial_poses, name="initial poses")
    if starts.ndim == 2:
        starts = starts[None]
    starts = starts.to(torch.float64).cpu()
    xray, mask = _check_inputs(volume, xray, detector, mask)
    for pose in starts:
        _check_start(volume, detector, pose)
    dtype, device = volume.mu.dtype, volume.mu.device
    center = volume.center.to(torch.float64).cpu()
    reference = starts[0] if reference_pose is None else geometry.check_pose(reference_pose).to(torch.float64).cpu().reshape(4, 4)
    params = PoseParameters(opts.parameterization, reference, center, float(detector.sdd))
    source_to_center = float((reference[:3, :3] @ center + reference[:3, 3]).norm())
    levels = _levels(volume, xray, detector, mask, opts.levels, source_to_center)
    run = _Run(opts, params, callback, cancel, len(levels))
    x = params.params(starts).to(dtype=dtype, device=device)
    finest = levels[-1]
    initial_similarity = run.score(finest, x)
    rot, trans = opts.steps()
    base = torch.tensor([math.radians(rot)] * 3 + [trans] * 3, dtype=dtype, device=device)
    per_level: list[int] = []
    reasons = ["max_iterations"] * x.shape[0]
    best = initial_similarity
    state: dict = {}
    cancelled = False
    chosen = None
    try:
        for index, level in enumerate(levels):
            before = run.iterations
            steps = (base * (level.factor / levels[0].factor)).expand(x.shape[0], 6).clone()
            if opts.optimizer in GRADIENT_OPTIMIZERS:
                x, best, reasons = _gradient_level(run, level, index, x, steps, state)
            elif opts.optimizer == "lm":
                x, best, reasons = _lm_level(run, level, index, x, state)
            else:
                x, best, reasons = _baseline_level(run, level, index, x, state)
            per_level.append(run.iterations - before)
            if select_best and index == 0 and x.shape[0] > 1:
                chosen = int(torch.argmax(best))
                x, best, reasons = x[chosen:chosen + 1], best[chosen:chosen + 1], [reasons[chosen]]
                initial_similarity = initial_similarity[chosen:chosen + 1]
    except _Cancelled:
        cancelled = True
        per_level.append(run.iterations - sum(per_level))
        if "best_x" in state:
            x = state["best_x"]
            if select_best and x.shape[0] > 1:
                chosen = int(torch.argmax(state["best"]))
                x = x[chosen:chosen + 1]
                initial_similarity = initial_similarity[chosen:chosen + 1]
        reasons = ["cancelled"] * x.shape[0]
    if cancelled:
        best = run.score(finest, x)
    seconds = time.perf_counter() - run.t0
    poses = params.pose(x.detach().to(torch.float64).cpu())
    if select_best and starts.shape[0] > 1:
        start_poses = starts[chosen:chosen + 1] if chosen is not None else starts[:1]
    else:
        start_poses = starts
    summary = asdict(opts)
    summary["levels"] = list(opts.levels)
    results = []
    for i in range(poses.shape[0]):
        results.append(RegistrationResult(
            pose=poses[i], initial_pose=start_poses[i], similarity=float(best[i]),
            initial_similarity=float(initial_similarity[i]), iterations=run.iterations, evaluations=run.evaluations,
            seconds=seconds, converged=(reasons[i] == "converged"), stop_reason=reasons[i], cancelled=cancelled,
            iterations_per_level=list(per_level), trace=_row_trace(run.trace, i, poses.shape[0]), options=summary,
        ))
    return results


def _row_trace(trace: list[dict], row: int, n_rows: int) -> list[dict]:
    out = []
    for entry in trace:
        sims, bests = entry["similarity"], entry["best_similarity"]
        if len(sims) != n_rows and len(sims) != 1:
            continue
        pick = row if len(sims) == n_rows else 0
        item = {k: v for k, v in entry.items() if k not in ("similarity", "best_similarity", "step_scale", "damping")}
        item["similarity"] = sims[pick]
        item["best_similarity"] = bests[pick]
        out.append(item)
    return out


def register(
    volume: Volume,
    xray,
    detector: Detector,
    initial_pose: torch.Tensor,
    options: RegistrationOptions | None = None,
    *,
    mask=None,
    callback: Callable[[Progress], bool | None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RegistrationResult:
    """Register ``volume`` to ``xray`` (H, W) seen on ``detector``, from ``initial_pose`` (4, 4).

    The X-ray is in the line-integral convention (bone bright; see
    `DiffRegLogic.xray`); ``mask`` (H, W) weights its pixels (0 = ignore).
    With ``options.n_starts > 1`` random starts within
    ``start_rotation_deg`` / ``start_translation_mm`` of the initial pose are
    added (seeded by ``options.seed``) and the best after the coarsest level
    is refined. Returns a `RegistrationResult`.
    """
    opts = options or RegistrationOptions()
    opts.validate()
    pose = geometry.check_pose(initial_pose, name="initial pose").to(torch.float64).cpu()
    if pose.ndim == 3:
        if pose.shape[0] != 1:
            raise InputError(f"register takes one initial pose (4, 4), got {tuple(pose.shape)}; use register_batch")
        pose = pose[0]
    starts = pose[None]
    if opts.n_starts > 1:
        motions = random_motions(opts.n_starts - 1, opts.start_rotation_deg, opts.start_translation_mm, opts.seed)
        starts = torch.cat([starts, perturb_pose(pose, motions, volume.center.to(torch.float64).cpu())])
    return register_batch(volume, xray, detector, starts, opts, mask=mask, select_best=True,
                          callback=callback, cancel=cancel, reference_pose=pose)[0]
