"""Monte Carlo registrations from random starts around the true pose, per optimiser (the seed paper's Table 2).

Writes ``robustness.csv`` (one row per optimiser and start),
``robustness.md`` (one summary row per optimiser: success rates, median mTRE
and time, convergence and false convergence), ``robustness_curves.png``
(median best similarity vs iteration) and ``robustness_mtre.png`` (fraction
of starts below each final mTRE).

With ``options={"search": "wide", ...}`` each start is registered on its own
with `DiffRegLogic.registration.register`, which first runs the global search
(`DiffRegLogic.registration.search`) about that start; the ``candidates``
column then counts the poses the search scored (0 without the search).
"""

from __future__ import annotations

import math
import numbers
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import evaluation
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..registration.engine import register, register_batch
from ..registration.optimizers import OPTIMIZERS
from ..registration.options import RegistrationOptions, make_options
from ..volume.ct import Volume
from .common import (N_TARGET_POINTS, PLOT_SIZE, _check_case, _count, _names, _nonnegative, _thresholds,
                     keep_rows_on_interrupt)
from .reports import fmt, line_plot, markdown_table, round_cell, save_png, write_csv

MTRE_CURVE_MAX_MM = 20.0
"""The success curve of `robustness` spans final mTRE thresholds 0..this (mm)."""

Log = Callable[[str], None]

ROBUSTNESS_COLUMNS = (
    "optimizer", "start", "start_mtre_mm", "final_mtre_mm", "start_rotation_deg", "start_translation_mm",
    "rotation_error_deg", "translation_error_mm", "initial_similarity", "final_similarity", "converged",
    "stop_reason", "iterations", "seconds", "candidates",
)
"""Columns of ``robustness.csv``; errors are against the true pose, at the CT centre for rotation/translation;
``candidates`` = poses the global search scored for the start (0: no search)."""


def _options(name: str, options: dict | None) -> RegistrationOptions:
    extra = dict(options or {})
    if "optimizer" in extra:
        raise InputError("options must not set 'optimizer': list the optimisers in the optimizers argument")
    return make_options(optimizer=name, **extra)


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
        "median_candidates": float(statistics.median(r["candidates"] for r in rows)),
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
    (one start per chunk for the gradient-free baselines, which
    run starts one after the other anyway). With ``options["search"] ==
    "wide"`` each start is instead registered alone with
    ``register(volume, xray, detector, start, options)``: the global search
    runs about each start and its candidates form a multi-start (time per
    registration includes the search). Per start: start and final mTRE
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
    median_start_mtre_mm, median_seconds, median_iterations,
    median_candidates, converged_rate, false_convergence_rate}),
    ``seconds`` (wall time of the whole run).
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
    out = Path(out_dir)  # made only when the results are written (a failed run leaves no empty folder)

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
    with keep_rows_on_interrupt(out / "robustness.partial.csv", ROBUSTNESS_COLUMNS, lambda: _csv_rows(rows)):
        _register_all(volume, xray, detector, pose, starts, names, opts, batch, points, center, thresholds,
                      (start_mtre, start_rot, start_trans), rows, traces, log)
    seconds = time.perf_counter() - t_all
    summary = {name: _summary(rows[name], thresholds) for name in names}

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "robustness.csv", out / "robustness.md"
    curves_path, mtre_path = out / "robustness_curves.png", out / "robustness_mtre.png"
    write_csv(csv_path, ROBUSTNESS_COLUMNS, _csv_rows(rows))

    first = opts[names[0]]
    wide = any(o.search == "wide" for o in opts.values())
    lines = [
        "# Robustness to the starting pose",
        "",
        f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}, "
        f"pixel {float(detector.pixel_spacing[0]):g}x{float(detector.pixel_spacing[1]):g} mm, "
        f"SDD {float(detector.sdd):g} mm",
        f"- starts: {n} random rigid motions of the CT about its centre, each rotation-vector component "
        f"uniform in +-{max_rot:g} deg and each translation component in +-{max_trans:g} mm "
        f"(seed {int(seed)}; median start mTRE {fmt(np.median(start_mtre), 2)} mm), the same for every optimiser",
        f"- registration: similarity {first.similarity}, renderer {first.renderer}, levels "
        f"{', '.join(f'{f:g}' for f in first.levels)}, at most {first.max_iterations} iterations per level, "
        f"parameterization {first.parameterization}; {len(points)} CT points for the mTRE",
        *([f"- global search before each registration (search = wide): {first.search_candidates} candidates "
           f"within +-{first.search_rotation_deg:g} deg / +-{first.search_translation_mm:g} mm of the start, "
           f"the best {first.search_keep} distinct ones registered as a multi-start, one start at a time"]
          if wide else []),
        f"- success = final mTRE < threshold; false convergence = converged but mTRE >= {thresholds[0]:g} mm; "
        f"time per registration = chunk time / chunk size (up to {batch} starts per chunk); "
        f"device {volume.mu.device}, total {seconds:.1f} s",
        "",
    ]
    header = (["optimiser", "n"] + [f"success < {t:g} mm" for t in thresholds]
              + ["median final mTRE (mm)", "median time / registration (s)", "converged", "false convergence"]
              + (["median candidates"] if wide else []))
    table = []
    for name in names:
        s = summary[name]
        table.append([name, s["n"]] + [f"{100 * s['success_rate'][f'{t:g}']:.0f}%" for t in thresholds]
                     + [fmt(s["median_final_mtre_mm"], 2), fmt(s["median_seconds"], 2),
                        f"{100 * s['converged_rate']:.0f}%", f"{100 * s['false_convergence_rate']:.0f}%"]
                     + ([f"{s['median_candidates']:.0f}"] if wide else []))
    lines += markdown_table(header, table)
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


def _register_all(volume, xray, detector, pose, starts, names, opts, batch, points, center, thresholds, start_errors,
                  rows: dict, traces: dict, log) -> None:
    """Register every start with every optimiser, appending to ``rows`` and ``traces`` as chunks finish."""
    start_mtre, start_rot, start_trans = start_errors
    n = len(starts)
    for name in names:
        wide = opts[name].search == "wide"  # the search runs about each start: one start at a time
        chunk = 1 if wide or OPTIMIZERS[name].one_start_at_a_time else batch
        rows[name], traces[name] = [], []
        t_opt = time.perf_counter()
        for i in range(0, n, chunk):
            t0 = time.perf_counter()
            if wide:
                results = [register(volume, xray, detector, starts[i], opts[name])]
            else:
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
                    "candidates": _candidates(result),
                })
                traces[name].append(result.trace)
            if log is not None:
                done = len(rows[name])
                rate = np.mean([r["final_mtre_mm"] < thresholds[0] for r in rows[name]])
                log(f"{name}: {done}/{n} starts, success (mTRE < {thresholds[0]:g} mm) {rate:.0%}, "
                    f"{time.perf_counter() - t_opt:.1f} s")


def _candidates(result) -> int:
    """Poses the global search scored for a result (0 when no search ran)."""
    search = getattr(result, "search", None)
    return int(search.get("candidates", 0)) if isinstance(search, dict) else 0


_DIGITS = {"start_mtre_mm": 4, "final_mtre_mm": 4, "start_rotation_deg": 4, "start_translation_mm": 4,
           "rotation_error_deg": 4, "translation_error_mm": 4, "initial_similarity": 6, "final_similarity": 6,
           "seconds": 4}


def _csv_rows(rows: dict[str, list[dict]]) -> list[list]:
    """CSV cells (`ROBUSTNESS_COLUMNS`) of every finished row, optimisers in order."""
    return [[round_cell(r[c], _DIGITS[c]) if c in _DIGITS else r[c] for c in ROBUSTNESS_COLUMNS]
            for name_rows in rows.values() for r in name_rows]
