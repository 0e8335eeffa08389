"""The seed paper's evidence as experiments that write CSV, Markdown and PNG files.

* `landscape`: the similarity along each of the six pose axes around the
  true pose (the paper's Fig. 5): rotations rx, ry, rz (deg, components of
  the rotation vector of a rotation of the CT about its centre) and
  translations tx, ty, tz (mm, world axes), one parameter at a time.
  Writes ``landscape.csv``, ``landscape.md`` and ``landscape.png``.
* `robustness`: Monte Carlo registrations from random starts around the
  true pose (the paper's Table 2), the same starts for every optimiser.
  Writes ``robustness.csv`` (one row per optimiser and start),
  ``robustness.md`` (one summary row per optimiser: success rates, median
  mTRE and time, convergence and false convergence),
  ``robustness_curves.png`` (median best similarity vs iteration) and
  ``robustness_mtre.png`` (fraction of starts below each final mTRE).
* `polychromatic`: a realistic simulated X-ray (polychromatic physics,
  scatter, heel, noise, blur) registered with a monochromatic and a
  polychromatic DRR model from the same starts (the seed poster's claim).
  Writes ``polychromatic.csv``, ``polychromatic.md`` and ``polychromatic.png``.

Poses are camera_from_world (4, 4) (README, "Geometry"); a motion row is
(rotation vector rad (3), translation mm (3)) applied about the CT centre by
`registration.perturb_pose`. Errors are measured against ``true_pose`` with
`evaluation` (mTRE over `evaluation.target_points(volume, 1000)`, rotation
and translation error at the CT centre).
"""

from __future__ import annotations

import csv
import math
import numbers
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluation, geometry
from .drr import RENDERERS, render
from .errors import InputError
from .figures import line_plot, save_png
from .geometry import Detector
from .optimizers import GRADIENT_OPTIMIZERS, OPTIMIZERS
from .registration import RegistrationOptions, perturb_pose, random_motions, register_batch
from .similarity import get_similarity
from .volume import Volume

__all__ = ["AXES", "PLOT_SIZE", "RENDER_BATCH", "N_TARGET_POINTS", "MTRE_CURVE_MAX_MM", "landscape", "robustness",
           "polychromatic"]

AXES = ("rx", "ry", "rz", "tx", "ty", "tz")
"""The six pose axes of the landscape: rotation-vector components (deg) and translations (mm)."""

PLOT_SIZE = (640, 360)
"""(width, height) in pixels of one plot panel; `landscape` stacks two panels per similarity."""

RENDER_BATCH = 16
"""Poses per render call in `landscape`."""

N_TARGET_POINTS = 1000
"""CT points of the mTRE in `robustness`."""

MTRE_CURVE_MAX_MM = 20.0
"""The success curve of `robustness` spans final mTRE thresholds 0..this (mm)."""

BASELINE_OPTIMIZERS = tuple(name for name in OPTIMIZERS if name not in GRADIENT_OPTIMIZERS + ("lm",))
"""Gradient-free optimisers: register_batch runs their starts one after the other, so `robustness` gives them one start per chunk."""

Log = Callable[[str], None]

# --------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------


def _check_case(volume, xray, detector, true_pose) -> tuple[torch.Tensor, torch.Tensor]:
    """(xray (H, W) on the volume's device and dtype, true pose (4, 4) float64 CPU)."""
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    try:
        xray = torch.as_tensor(xray)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the X-ray must be a 2D image (H, W) as a tensor or array, got {type(xray).__name__}") from exc
    if xray.ndim != 2 or tuple(xray.shape) != detector.shape:
        raise InputError(
            f"the X-ray has shape {tuple(xray.shape)} but the detector is {detector.rows}x{detector.cols}; "
            "give the geometry of this image"
        )
    xray = xray.to(device=volume.mu.device, dtype=volume.mu.dtype)
    if not torch.isfinite(xray).all():
        raise InputError("the X-ray contains NaN or infinite pixels; fix them before running the experiment")
    return xray, _true_pose(true_pose)


def _true_pose(true_pose) -> torch.Tensor:
    """The true pose as one (4, 4) float64 CPU matrix (InputError otherwise)."""
    pose = geometry.check_pose(true_pose, name="true pose").to(torch.float64).cpu()
    if pose.ndim == 3:
        if pose.shape[0] != 1:
            raise InputError(f"the true pose must be one (4, 4) matrix, got {tuple(pose.shape)}")
        pose = pose[0]
    return pose


def _nonnegative(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _names(values, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    try:
        names = tuple(values)
    except TypeError as exc:
        raise InputError(f"{name} must be a sequence of names, got {values!r}") from exc
    if not names:
        raise InputError(f"{name} is empty: give at least one")
    if len(set(names)) != len(names):
        raise InputError(f"{name} lists a name twice: {list(names)}")
    return names


def _thresholds(values) -> list[float]:
    """success_mm as a non-empty list of positive finite mm."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values]
    try:
        items = list(values)
    except TypeError as exc:
        raise InputError(f"success_mm must be a sequence of positive mTRE thresholds (mm), got {values!r}") from exc
    if not items:
        raise InputError("success_mm is empty: give at least one mTRE threshold (mm)")
    out = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise InputError(f"each success_mm threshold must be a positive number of mm, got {t!r}")
        out.append(float(t))
    return out


def _round(value: float, digits: int) -> float | str:
    """``value`` rounded for a CSV/Markdown cell; NaN and inf as text."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return round(value, digits)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _stack_panels(panels: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(panels), axis=0)


def _level_case(xray: torch.Tensor, detector: Detector, level: float) -> tuple[torch.Tensor, Detector]:
    """The detector downsampled by ``level`` and the X-ray area-averaged to its size."""
    if level == 1:
        return xray, detector
    small = detector.downsample(level)
    if small.shape == tuple(xray.shape):
        return xray, small
    return F.interpolate(xray[None, None], size=small.shape, mode="area")[0, 0], small


# --------------------------------------------------------------------------
# Similarity landscape (Fig. 5)
# --------------------------------------------------------------------------


def _offsets(half_range: float, n_points: int) -> np.ndarray:
    """``n_points`` offsets evenly from -half_range to +half_range, with 0 added if an even count misses it."""
    offsets = np.linspace(-half_range, half_range, n_points)
    if not np.any(offsets == 0.0):
        offsets = np.sort(np.append(offsets, 0.0))
    offsets[np.abs(offsets) < 1e-12 * max(half_range, 1.0)] = 0.0
    return offsets


def landscape(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    similarities: Sequence[str] = ("zncc",),
    renderer: str = "siddon",
    rotation_range_deg: float = 30.0,
    translation_range_mm: float = 60.0,
    n_points: int = 41,
    level: float = 1.0,
) -> dict:
    """Similarity along each of the six pose axes around ``true_pose`` (the seed paper's Fig. 5).

    For each axis in `AXES` only that parameter varies, over ``n_points``
    offsets from -range to +range (0 included; an even ``n_points`` gets 0
    added): the CT is rotated about its centre by the rotation vector
    ``offset * e_k`` (deg) or shifted by ``offset * e_k`` (mm, world axes),
    ``pose = perturb_pose(true_pose, motion, volume.center)``. The DRRs are
    rendered `RENDER_BATCH` poses at a time without gradients on
    ``detector.downsample(level)`` and compared with the X-ray (H, W)
    area-averaged to that size.

    Writes into ``out_dir`` (created if missing):

    * ``landscape.csv``: columns similarity, axis, offset (deg or mm), value;
      one row per similarity, axis and offset;
    * ``landscape.md``: per similarity and axis the offset of the maximum,
      whether it is at 0, the value at 0 and the maximum;
    * ``landscape.png``: per similarity two stacked line plots (`PLOT_SIZE`
      each): rotations (deg) and translations (mm), value vs offset.

    Returns a dict: ``csv``, ``markdown``, ``png`` (paths), ``argmax``
    ({similarity: {axis: offset of the maximum}}), ``value_at_zero``
    ({similarity: value}), ``offsets`` ({"rotation": [deg], "translation":
    [mm]}).
    """
    xray, pose = _check_case(volume, xray, detector, true_pose)
    names = _names(similarities, "similarities")
    functions = {name: get_similarity(name) for name in names}
    if renderer not in RENDERERS:
        raise InputError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")
    rot_range = _nonnegative(rotation_range_deg, "rotation_range_deg")
    trans_range = _nonnegative(translation_range_mm, "translation_range_mm")
    n_points = _count(n_points, "n_points")
    try:
        level = float(level)
    except (TypeError, ValueError) as exc:
        raise InputError(f"level must be a downsampling factor >= 1, got {level!r}") from exc
    if not (math.isfinite(level) and level >= 1):
        raise InputError(f"level must be a downsampling factor >= 1, got {level!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    xr, det = _level_case(xray, detector, level)
    center = volume.center.to(torch.float64).cpu()
    rot_offsets, trans_offsets = _offsets(rot_range, n_points), _offsets(trans_range, n_points)
    motions, keys = [], []
    for k, axis in enumerate(AXES):
        offsets = rot_offsets if k < 3 else trans_offsets
        m = torch.zeros(len(offsets), 6, dtype=torch.float64)
        m[:, k] = torch.as_tensor(np.deg2rad(offsets) if k < 3 else offsets, dtype=torch.float64)
        motions.append(m)
        keys += [(axis, float(o)) for o in offsets]
    poses = perturb_pose(pose, torch.cat(motions), center)

    values = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, poses.shape[0], RENDER_BATCH):
            drr = render(volume, det, poses[start:start + RENDER_BATCH], renderer)
            for name, fn in functions.items():
                values[name] += fn(drr, xr).double().cpu().tolist()

    rows, argmax, at_zero, table = [], {}, {}, []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in names:
        argmax[name] = {}
        per_axis = {axis: [] for axis in AXES}
        for (axis, offset), value in zip(keys, values[name]):
            per_axis[axis].append((offset, value))
            rows.append([name, axis, _round(offset, 6), _round(value, 8)])
        curves[name] = {}
        for k, axis in enumerate(AXES):
            offs = np.array([o for o, _ in per_axis[axis]])
            vals = np.array([v for _, v in per_axis[axis]])
            curves[name][axis] = (offs, vals)
            finite = np.where(np.isfinite(vals), vals, -np.inf)
            best = int(np.argmax(finite))
            zero = float(vals[int(np.argmin(np.abs(offs)))])
            argmax[name][axis] = float(offs[best])
            at_zero.setdefault(name, zero)
            table.append([name, axis, "deg" if k < 3 else "mm", _fmt(offs[best], 2),
                          "yes" if offs[best] == 0 else "no", _fmt(zero, 6), _fmt(vals[best], 6)])

    csv_path, md_path, png_path = out / "landscape.csv", out / "landscape.md", out / "landscape.png"
    _write_csv(csv_path, ["similarity", "axis", "offset", "value"], rows)
    lines = [
        "# Similarity landscape around the true pose",
        "",
        f"One pose parameter varied at a time: rotations rx, ry, rz of the CT about its centre within "
        f"+-{rot_range:g} deg, translations tx, ty, tz within +-{trans_range:g} mm "
        f"({len(rot_offsets)} offsets per axis); renderer {renderer}, detector {det.rows}x{det.cols} "
        f"(level {level:g}).",
        "",
    ]
    lines += _markdown_table(["similarity", "axis", "unit", "offset of maximum", "maximum at 0",
                              "value at 0", "maximum"], table)
    md_path.write_text("\n".join(lines) + "\n")

    panels = []
    for name in names:
        series_rot = {axis: curves[name][axis] for axis in AXES[:3]}
        series_trans = {axis: curves[name][axis] for axis in AXES[3:]}
        panels.append(line_plot(series_rot, title=f"{name}: rotation about the CT centre",
                                xlabel="offset from the true pose (deg)", ylabel=name, size=PLOT_SIZE))
        panels.append(line_plot(series_trans, title=f"{name}: translation",
                                xlabel="offset from the true pose (mm)", ylabel=name, size=PLOT_SIZE))
    save_png(png_path, _stack_panels(panels))
    return {
        "csv": csv_path,
        "markdown": md_path,
        "png": png_path,
        "argmax": argmax,
        "value_at_zero": at_zero,
        "offsets": {"rotation": rot_offsets.tolist(), "translation": trans_offsets.tolist()},
    }


# --------------------------------------------------------------------------
# Robustness to the start (Table 2)
# --------------------------------------------------------------------------

ROBUSTNESS_COLUMNS = (
    "optimizer", "start", "start_mtre_mm", "final_mtre_mm", "start_rotation_deg", "start_translation_mm",
    "rotation_error_deg", "translation_error_mm", "initial_similarity", "final_similarity", "converged",
    "stop_reason", "iterations", "seconds",
)
"""Columns of ``robustness.csv``; errors are against the true pose, at the CT centre for rotation/translation."""


def _options(name: str, options: dict | None) -> RegistrationOptions:
    extra = dict(options or {})
    if "optimizer" in extra:
        raise InputError("options must not set 'optimizer': list the optimisers in the optimizers argument")
    try:
        opts = RegistrationOptions(optimizer=name, **extra)
    except TypeError as exc:
        known = ", ".join(f for f in RegistrationOptions.__dataclass_fields__ if f != "optimizer")
        raise InputError(f"unknown registration option in {sorted(extra)}; valid options: {known}") from exc
    opts.validate()
    return opts


def _trace_curve(trace: list[dict], level_lengths: list[int]) -> np.ndarray:
    """One start's best similarity per iteration, levels concatenated, each level padded to ``level_lengths``."""
    out = []
    for level, length in enumerate(level_lengths):
        values = [float(e["best_similarity"]) for e in trace if e.get("level") == level]
        if not values:
            out += [math.nan] * length
            continue
        out += values + [values[-1]] * (length - len(values))
    return np.array(out, dtype=np.float64)


def _median_curve(traces: list[list[dict]]) -> np.ndarray:
    """Median over starts of the best similarity so far vs iteration (levels concatenated in order)."""
    n_levels = max((int(e.get("level", 0)) + 1 for t in traces for e in t), default=0)
    if n_levels == 0:
        return np.zeros(0)
    lengths = [max(sum(1 for e in t if e.get("level") == level) for t in traces) for level in range(n_levels)]
    curves = np.stack([_trace_curve(t, lengths) for t in traces])
    with np.errstate(all="ignore"):
        return np.nanmedian(curves, axis=0) if np.isfinite(curves).any() else curves[0]


def _summary(rows: list[dict], thresholds: Sequence[float]) -> dict:
    final = np.array([r["final_mtre_mm"] for r in rows], dtype=np.float64)
    ok = np.isfinite(final)
    converged = np.array([r["converged"] for r in rows], dtype=bool)
    first = thresholds[0]
    with np.errstate(invalid="ignore"):
        false_conv = converged & ~(ok & (final < first))
        success = {f"{t:g}": float(np.mean(ok & (final < t))) for t in thresholds}
    return {
        "n": len(rows),
        "success_rate": success,
        "median_final_mtre_mm": float(np.median(final[ok])) if ok.any() else None,
        "mean_final_mtre_mm": float(np.mean(final[ok])) if ok.any() else None,
        "median_start_mtre_mm": float(np.median([r["start_mtre_mm"] for r in rows])),
        "median_seconds": float(statistics.median(r["seconds"] for r in rows)),
        "median_iterations": float(statistics.median(r["iterations"] for r in rows)),
        "converged_rate": float(converged.mean()),
        "false_convergence_rate": float(false_conv.mean()),
    }


def robustness(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    optimizers: Sequence[str] = ("adam", "gddm", "gdm", "gd"),
    n: int = 100,
    max_rotation_deg: float = 45.0,
    max_translation_mm: float = 60.0,
    seed: int = 0,
    success_mm: Sequence[float] = (2.0,),
    options: dict | None = None,
    batch: int = 25,
    ct_name: str = "built-in chest phantom",
    log: Log | None = print,
) -> dict:
    """Registrations from ``n`` random starts around ``true_pose``, per optimiser (the seed paper's Table 2).

    Starts: ``perturb_pose(true_pose, random_motions(n, max_rotation_deg,
    max_translation_mm, seed), volume.center)``: each rotation-vector
    component uniform in +-max_rotation_deg and each translation component in
    +-max_translation_mm, the same starts for every optimiser. Each optimiser
    registers them with ``register_batch(..., RegistrationOptions(optimizer=name,
    **options), reference_pose=true_pose)`` in chunks of ``batch`` starts
    (one start per chunk for the gradient-free `BASELINE_OPTIMIZERS`, which
    run starts one after the other anyway). Per start: start and final mTRE
    (over `N_TARGET_POINTS` CT points), rotation/translation error at the CT
    centre, similarity, the converged flag and stop reason, the iterations of
    its chunk and the seconds per registration (chunk time / chunk size).

    A start succeeds when its final mTRE < threshold, for each threshold of
    ``success_mm``; *false convergence* = converged but mTRE >= the first
    threshold. ``log`` (None for silence) gets one line per chunk.

    Writes into ``out_dir`` (created if missing): ``robustness.csv``
    (`ROBUSTNESS_COLUMNS`, one row per optimiser and start),
    ``robustness.md`` (a header with the CT ``ct_name``, start range, seed,
    levels, renderer, similarity; one summary row per optimiser),
    ``robustness_curves.png`` (median over starts of the best similarity so
    far vs iteration, levels concatenated) and ``robustness_mtre.png``
    (fraction of starts with final mTRE below x, x in 0..`MTRE_CURVE_MAX_MM`).

    Returns a dict: ``csv``, ``markdown``, ``curves_png``, ``mtre_png``
    (paths), ``summary`` ({optimiser: `_summary` numbers: n, success_rate
    {"2": fraction}, median_final_mtre_mm, mean_final_mtre_mm,
    median_start_mtre_mm, median_seconds, median_iterations, converged_rate,
    false_convergence_rate}), ``seconds`` (wall time of the whole run).
    """
    xray, pose = _check_case(volume, xray, detector, true_pose)
    names = _names(optimizers, "optimizers")
    for name in names:
        if name not in OPTIMIZERS:
            raise InputError(f"unknown optimiser {name!r}; choose from {', '.join(OPTIMIZERS)}")
    n = _count(n, "n")
    batch = _count(batch, "batch")
    max_rot = _nonnegative(max_rotation_deg, "max_rotation_deg")
    max_trans = _nonnegative(max_translation_mm, "max_translation_mm")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an integer, got {seed!r}")
    thresholds = _thresholds(success_mm)
    opts = {name: _options(name, options) for name in names}  # every option checked before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    center = volume.center.to(torch.float64).cpu()
    motions = random_motions(n, max_rot, max_trans, int(seed))
    starts = perturb_pose(pose, motions, center)
    points = evaluation.target_points(volume, N_TARGET_POINTS).to(torch.float64).cpu()
    start_mtre = evaluation.mtre(starts, pose, points).tolist()
    start_rot = evaluation.rotation_error_deg(starts, pose).tolist()
    start_trans = evaluation.translation_error_mm(starts, pose, center).tolist()

    t_all = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    traces: dict[str, list[list[dict]]] = {}
    for name in names:
        chunk = 1 if name in BASELINE_OPTIMIZERS else batch
        rows[name], traces[name] = [], []
        t_opt = time.perf_counter()
        for i in range(0, n, chunk):
            t0 = time.perf_counter()
            results = register_batch(volume, xray, detector, starts[i:i + chunk], opts[name], reference_pose=pose)
            per = (time.perf_counter() - t0) / len(results)
            final = torch.stack([r.pose for r in results]).to(torch.float64)
            final_mtre = evaluation.mtre(final, pose, points).tolist()
            rot = evaluation.rotation_error_deg(final, pose).tolist()
            trans = evaluation.translation_error_mm(final, pose, center).tolist()
            for j, result in enumerate(results):
                rows[name].append({
                    "optimizer": name, "start": i + j, "start_mtre_mm": start_mtre[i + j],
                    "final_mtre_mm": final_mtre[j], "start_rotation_deg": start_rot[i + j],
                    "start_translation_mm": start_trans[i + j], "rotation_error_deg": rot[j],
                    "translation_error_mm": trans[j], "initial_similarity": result.initial_similarity,
                    "final_similarity": result.similarity, "converged": bool(result.converged),
                    "stop_reason": result.stop_reason, "iterations": int(result.iterations), "seconds": per,
                })
                traces[name].append(result.trace)
            if log is not None:
                done = len(rows[name])
                rate = np.mean([r["final_mtre_mm"] < thresholds[0] for r in rows[name]])
                log(f"{name}: {done}/{n} starts, success (mTRE < {thresholds[0]:g} mm) {rate:.0%}, "
                    f"{time.perf_counter() - t_opt:.1f} s")
    seconds = time.perf_counter() - t_all
    summary = {name: _summary(rows[name], thresholds) for name in names}

    csv_path, md_path = out / "robustness.csv", out / "robustness.md"
    curves_path, mtre_path = out / "robustness_curves.png", out / "robustness_mtre.png"
    digits = {"start_mtre_mm": 4, "final_mtre_mm": 4, "start_rotation_deg": 4, "start_translation_mm": 4,
              "rotation_error_deg": 4, "translation_error_mm": 4, "initial_similarity": 6,
              "final_similarity": 6, "seconds": 4}
    csv_rows = []
    for name in names:
        for r in rows[name]:
            csv_rows.append([_round(r[c], digits[c]) if c in digits else r[c] for c in ROBUSTNESS_COLUMNS])
    _write_csv(csv_path, ROBUSTNESS_COLUMNS, csv_rows)

    first = opts[names[0]]
    lines = [
        "# Robustness to the starting pose",
        "",
        f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}, "
        f"pixel {float(detector.pixel_spacing[0]):g}x{float(detector.pixel_spacing[1]):g} mm, "
        f"SDD {float(detector.sdd):g} mm",
        f"- starts: {n} random rigid motions of the CT about its centre, each rotation-vector component "
        f"uniform in +-{max_rot:g} deg and each translation component in +-{max_trans:g} mm "
        f"(seed {int(seed)}; median start mTRE {_fmt(np.median(start_mtre), 2)} mm), the same for every optimiser",
        f"- registration: similarity {first.similarity}, renderer {first.renderer}, levels "
        f"{', '.join(f'{f:g}' for f in first.levels)}, at most {first.max_iterations} iterations per level, "
        f"parameterization {first.parameterization}; {len(points)} CT points for the mTRE",
        f"- success = final mTRE < threshold; false convergence = converged but mTRE >= {thresholds[0]:g} mm; "
        f"time per registration = chunk time / chunk size (up to {batch} starts per chunk); "
        f"device {volume.mu.device}, total {seconds:.1f} s",
        "",
    ]
    header = (["optimiser", "n"] + [f"success < {t:g} mm" for t in thresholds]
              + ["median final mTRE (mm)", "median time / registration (s)", "converged", "false convergence"])
    table = []
    for name in names:
        s = summary[name]
        table.append([name, s["n"]] + [f"{100 * s['success_rate'][f'{t:g}']:.0f}%" for t in thresholds]
                     + [_fmt(s["median_final_mtre_mm"], 2), _fmt(s["median_seconds"], 2),
                        f"{100 * s['converged_rate']:.0f}%", f"{100 * s['false_convergence_rate']:.0f}%"])
    lines += _markdown_table(header, table)
    md_path.write_text("\n".join(lines) + "\n")

    curves = {}
    for name in names:
        curve = _median_curve(traces[name])
        if curve.size and np.isfinite(curve).any():
            curves[name] = (np.arange(curve.size, dtype=np.float64), curve)
    if not curves:  # no trace at all (nothing iterated): an empty-looking but valid plot
        curves = {name: (np.zeros(1), np.array([summary[name]["success_rate"][f"{thresholds[0]:g}"]])) for name in names}
    save_png(curves_path, line_plot(curves, title=f"{first.similarity}: median best similarity over {n} starts",
                                    xlabel="iteration (levels one after the other)",
                                    ylabel="best similarity", size=PLOT_SIZE))
    xs = np.linspace(0.0, MTRE_CURVE_MAX_MM, 201)
    success_curves = {}
    for name in names:
        final = np.array([r["final_mtre_mm"] for r in rows[name]], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            success_curves[name] = (xs, np.array([np.mean(np.isfinite(final) & (final < x)) for x in xs]))
    save_png(mtre_path, line_plot(success_curves, title=f"Fraction of {n} starts below a final mTRE",
                                  xlabel="final mTRE (mm)", ylabel="fraction of starts", size=PLOT_SIZE))
    return {
        "csv": csv_path,
        "markdown": md_path,
        "curves_png": curves_path,
        "mtre_png": mtre_path,
        "summary": summary,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------
# Polychromatic vs monochromatic model against realistic X-rays
# --------------------------------------------------------------------------

POLY_COLUMNS = ("model", "start", "start_mtre_mm", "final_mtre_mm", "rotation_error_deg", "translation_error_mm",
                "final_similarity", "ncc", "ssim", "converged", "seconds")
"""Columns of ``polychromatic.csv``: one row per model and start."""


def polychromatic(
    volume: Volume,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    beam=None,
    realism=None,
    hu_to_mu=None,
    n: int = 20,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 20.0,
    seed: int = 0,
    success_mm: float = 2.0,
    options: dict | None = None,
    batch: int = 20,
    ct_name: str = "built-in chest phantom",
    log: Log | None = print,
) -> dict:
    """Register a realistic simulated X-ray with a monochromatic and a polychromatic DRR model (the poster's claim).

    The X-ray is `realism.simulate_radiograph` of the CT's materials
    (`materials.MaterialVolume.from_volume(volume, beam, hu_to_mu)`) at
    ``true_pose``, with the beam's polychromatic physics and ``realism``
    (default: 2e4 photons per unattenuated pixel and a 0.5 mm PSF; scatter
    and heel effect optional), as -log(I/I0). The two models are

    * ``monochromatic``: ``volume`` itself (line integrals of mu),
    * ``polychromatic``: the same materials and beam, without the realism,

    registered from the same ``n`` random starts (rotation-vector components
    uniform in +-max_rotation_deg, translations in +-max_translation_mm) with
    ``RegistrationOptions(**options)``. Reported per model: NCC and SSIM of
    its DRR at the true pose (agreement with the X-ray, no registration
    involved), success rate (final mTRE < ``success_mm``), median final mTRE,
    and median NCC/SSIM at the registered poses.

    Writes ``polychromatic.csv`` (`POLY_COLUMNS`), ``polychromatic.md`` and
    ``polychromatic.png`` (X-ray | monochromatic DRR | polychromatic DRR at the
    true pose). Returns {"csv", "markdown", "png", "summary", "seconds"}.
    """
    from .figures import grey, panel_row
    from .materials import MaterialVolume
    from .physics import Beam, tube_spectrum
    from .realism import Realism, simulate_radiograph
    from .similarity import image_metrics

    if not isinstance(volume, Volume) or isinstance(volume, MaterialVolume):
        raise InputError("polychromatic() takes the monochromatic Volume of the CT; it builds the materials itself")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    beam = beam or Beam(tube_spectrum(80))
    realism = realism or Realism(photons_per_pixel=2e4, blur_mm=0.5, seed=int(seed))
    n, batch = _count(n, "n"), _count(batch, "batch")
    max_rot = _nonnegative(max_rotation_deg, "max_rotation_deg")
    max_trans = _nonnegative(max_translation_mm, "max_translation_mm")
    materials = MaterialVolume.from_volume(volume, beam, hu_to_mu)
    pose = _true_pose(true_pose)
    renderer = (options or {}).get("renderer", "siddon")
    with torch.no_grad():
        xray = simulate_radiograph(materials, detector, pose, realism, renderer)[0]
    models = {"monochromatic": volume, "polychromatic": materials}
    opts = RegistrationOptions(**(options or {}))
    opts.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    center = volume.center.to(torch.float64).cpu()
    starts = perturb_pose(pose, random_motions(n, max_rot, max_trans, int(seed)), center)
    points = evaluation.target_points(volume, N_TARGET_POINTS).to(torch.float64).cpu()
    start_mtre = evaluation.mtre(starts, pose, points).tolist()
    t_all = time.perf_counter()
    rows, summary, at_truth = [], {}, {}
    for name, model in models.items():
        with torch.no_grad():
            at_truth[name] = render(model, detector, pose, opts.renderer, step_voxels=opts.step_voxels)[0]
        truth_metrics = image_metrics(at_truth[name], xray)
        finals, model_rows = [], []
        t_model = time.perf_counter()
        for i in range(0, n, batch):
            t0 = time.perf_counter()
            results = register_batch(model, xray, detector, starts[i:i + batch], opts, reference_pose=pose)
            per = (time.perf_counter() - t0) / len(results)
            final = torch.stack([r.pose for r in results]).to(torch.float64)
            with torch.no_grad():
                drrs = render(model, detector, final, opts.renderer, step_voxels=opts.step_voxels)
            mtre = evaluation.mtre(final, pose, points).tolist()
            rot = evaluation.rotation_error_deg(final, pose).tolist()
            trans = evaluation.translation_error_mm(final, pose, center).tolist()
            for j, result in enumerate(results):
                metrics = image_metrics(drrs[j], xray)
                model_rows.append({"model": name, "start": i + j, "start_mtre_mm": start_mtre[i + j],
                                   "final_mtre_mm": mtre[j], "rotation_error_deg": rot[j],
                                   "translation_error_mm": trans[j], "final_similarity": result.similarity,
                                   "ncc": metrics["ncc"], "ssim": metrics["ssim"],
                                   "converged": bool(result.converged), "seconds": per})
            finals += mtre
        final_mtre = np.array(finals)
        summary[name] = {
            "ncc_at_truth": truth_metrics["ncc"], "ssim_at_truth": truth_metrics["ssim"],
            "success_rate": float(np.mean(final_mtre < success_mm)),
            "median_final_mtre_mm": float(np.median(final_mtre)),
            "median_ncc": float(np.median([r["ncc"] for r in model_rows])),
            "median_ssim": float(np.median([r["ssim"] for r in model_rows])),
            "median_seconds": float(np.median([r["seconds"] for r in model_rows])),
        }
        rows += model_rows
        if log is not None:
            s = summary[name]
            log(f"{name}: NCC at truth {s['ncc_at_truth']:.4f}, success {s['success_rate']:.0%}, median mTRE "
                f"{s['median_final_mtre_mm']:.2f} mm, {time.perf_counter() - t_model:.1f} s")
    seconds = time.perf_counter() - t_all

    csv_path, md_path, png_path = out / "polychromatic.csv", out / "polychromatic.md", out / "polychromatic.png"
    _write_csv(csv_path, POLY_COLUMNS, [[_round(r[c], 5) if isinstance(r[c], float) else r[c] for c in POLY_COLUMNS]
                                        for r in rows])
    spectrum = beam.spectrum
    lines = [
        "# Polychromatic vs monochromatic DRRs against a realistic X-ray",
        "",
        f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}, SDD {float(detector.sdd):g} mm",
        f"- X-ray: polychromatic simulation ({spectrum.name}, {len(spectrum.energies_kev)} energy bins, mean "
        f"{spectrum.mean_energy_kev:.1f} keV, {beam.response.replace('_', '-')} detector; materials "
        f"{', '.join(materials.materials)}) with scatter fraction {realism.scatter_fraction:g} "
        f"(sigma {realism.scatter_sigma_mm:g} mm), heel {realism.heel:g}, "
        f"{realism.photons_per_pixel:g} photons per unattenuated pixel, PSF {realism.blur_mm:g} mm; -log(I/I0)"
        if realism.photons_per_pixel else
        f"- X-ray: polychromatic simulation ({spectrum.name}) with realism {realism}",
        "- models: monochromatic = line integrals of mu (HU -> mu at about 60 keV); polychromatic = the same "
        "materials and beam as the simulation, without scatter, heel, noise or blur",
        f"- registration: {n} random starts (rotation components +-{max_rot:g} deg, translations +-{max_trans:g} mm, "
        f"seed {int(seed)}; median start mTRE {_fmt(np.median(start_mtre), 2)} mm), the same for both models; "
        f"{opts.optimizer}, {opts.similarity}, renderer {opts.renderer}, levels "
        f"{', '.join(f'{f:g}' for f in opts.levels)}; success = final mTRE < {success_mm:g} mm; total {seconds:.1f} s",
        "",
    ]
    header = ["model", "NCC at true pose", "SSIM at true pose", f"success < {success_mm:g} mm",
              "median final mTRE (mm)", "median NCC registered", "median SSIM registered", "median s / registration"]
    lines += _markdown_table(header, [[name, _fmt(s["ncc_at_truth"], 4), _fmt(s["ssim_at_truth"], 4),
                                       f"{100 * s['success_rate']:.0f}%", _fmt(s["median_final_mtre_mm"], 2),
                                       _fmt(s["median_ncc"], 4), _fmt(s["median_ssim"], 4),
                                       _fmt(s["median_seconds"], 2)] for name, s in summary.items()])
    md_path.write_text("\n".join(lines) + "\n")
    save_png(png_path, panel_row([grey(xray), grey(at_truth["monochromatic"]), grey(at_truth["polychromatic"])],
                                 ["simulated X-ray", "monochromatic DRR", "polychromatic DRR"]))
    return {"csv": csv_path, "markdown": md_path, "png": png_path, "summary": summary, "seconds": seconds}
