"""The learned similarity against image similarities: capture ranges and convergence (Chen & Kong's Figs. 3, 4).

* `capture_range`: the interval [-a, +b] about the truth on which a
  similarity curve decreases monotonically on each side (a pure function).
* `similarity_landscapes`: every measure (learned models and image
  similarities) along the six pose axes about the truth (`landscape`), with
  the capture range per measure and axis and on how many axes each learned
  measure's range is wider than each other measure's (Fig. 3).
* `similarity_convergence`: each optimiser registers on the learned
  similarity alone (no polish) from the same seeded starts, one at a time; a
  registration callback records after every iteration the mTRE of the best
  pose so far (`Progress.pose`) and the elapsed seconds. Reported: the median
  mTRE vs iteration and vs time, and the iterations and seconds each start
  needs to reach the basin (mTRE below ``basin_mm``) (Fig. 4, right).

The robustness table is `similarity_robustness_study`.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .. import evaluation
from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume
from .common import PLOT_SIZE, _check_case, _names, _nonnegative, keep_rows_on_interrupt
from .landscape_study import AXES, landscape
from .reports import fmt, line_plot, markdown_table, round_cell, save_png, stack_panels, write_csv
from .similarity_robustness_study import _seeded_starts, _settings

__all__ = ["capture_range", "similarity_landscapes", "similarity_convergence", "CAPTURE_RTOL", "CAPTURE_COLUMNS",
           "CONVERGENCE_COLUMNS", "CONVERGENCE_START_COLUMNS", "CONVERGENCE_POINTS", "BASIN_MM"]

CAPTURE_RTOL = 1e-9
"""Relative tolerance of `capture_range`: a rise by at most this fraction of the larger |value| is no rise."""
CAPTURE_COLUMNS = ("measure", "kind", "axis", "unit", "a", "b", "width", "value_at_zero", "argmax_offset")
"""Columns of ``capture_range.csv``: a, b, width = a + b in deg (rx, ry, rz) or mm (tx, ty, tz)."""
CONVERGENCE_POINTS = 500
"""CT points of the mTRE recorded at every iteration (`evaluation.target_points`)."""
BASIN_MM = 10.0
"""Default basin: a start reaches it at the first iteration with mTRE below this (mm)."""
CONVERGENCE_COLUMNS = ("optimizer", "start", "iteration", "seconds", "mtre_mm", "similarity")
"""Columns of ``similarity_convergence.csv``: one row per optimiser, start and iteration; iteration 0 is the start
(0 s, the start's similarity on the finest level), iteration k the k-th callback (best pose so far, elapsed s)."""
CONVERGENCE_START_COLUMNS = ("optimizer", "start", "start_mtre_mm", "final_mtre_mm", "iterations", "seconds",
                             "basin_iteration", "basin_seconds", "converged", "stop_reason")
"""Columns of ``similarity_convergence_starts.csv``; basin_* are inf when the start never reached the basin."""
_FIXED = ("optimizer", "similarity", "levels", "max_iterations")


def capture_range(offsets, values, rtol: float = CAPTURE_RTOL) -> tuple[float, float]:
    """(a, b) >= 0: the curve falls monotonically from offset 0 over [-a, 0] and over [0, +b].

    ``offsets`` (N,) strictly increasing, with 0 among them (up to 1e-9 of
    the largest |offset|); ``values`` (N,) the similarity there. Moving away
    from 0 on each side, no step may raise the value by more than ``rtol *
    max(|v_k|, |v_k+1|)`` (non-strict, up to rounding); a or b is the offset
    of the last sample reached. NaN or inf ends a side. When 0 is no local
    maximum (a neighbour is higher, or the value at 0 is not finite) a = b =
    0. Units: those of ``offsets``.
    """
    x = np.asarray(offsets, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or v.shape != x.shape or x.size == 0:
        raise InputError(f"offsets and values must be 1-D of one length, got {x.shape} and {v.shape}")
    if not np.isfinite(x).all() or (x.size > 1 and not np.all(np.diff(x) > 0)):
        raise InputError("offsets must be finite and strictly increasing")
    i0 = int(np.argmin(np.abs(x)))
    if abs(x[i0]) > 1e-9 * max(float(np.abs(x).max()), 1e-300):
        raise InputError("offsets must contain 0 (the true pose)")
    rtol = _nonnegative(rtol, "rtol")

    def falls(k: int, j: int) -> bool:
        """The step from sample k to its neighbour j does not go up."""
        return bool(np.isfinite(v[j]) and v[j] <= v[k] + rtol * max(abs(v[k]), abs(v[j])))

    if not np.isfinite(v[i0]) or (i0 > 0 and not falls(i0, i0 - 1)) or (i0 < x.size - 1 and not falls(i0, i0 + 1)):
        return 0.0, 0.0
    hi = i0
    while hi + 1 < x.size and falls(hi, hi + 1):
        hi += 1
    lo = i0
    while lo > 0 and falls(lo, lo - 1):
        lo -= 1
    return float(-x[lo]), float(x[hi])


def similarity_landscapes(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    measures: Mapping[str, str | Callable],
    rotation_range_deg: float = 45.0,
    translation_range_mm: float = 60.0,
    n_points: int = 41,
    level: float = 1.0,
    renderer: str = "siddon",
    rtol: float = CAPTURE_RTOL,
) -> dict:
    """Every measure along the six pose axes about ``true_pose``, with its capture range (Chen & Kong's Fig. 3).

    ``measures``: name -> a similarity name (``"zncc"``) or a callable
    ``(drr, xray, mask) -> (B,)`` such as a `LearnedSimilarity` (``1 -``
    learned distance); callables count as *learned*. The curves are
    `landscape`'s (same offsets, renders on ``detector.downsample(level)``),
    which writes ``landscape.csv`` / ``.md`` / ``.png`` into ``out_dir``. Per
    measure and axis `capture_range` gives [-a, +b] (deg or mm); a width
    a + b equal to twice the range means monotone over the whole sampled
    range (the true capture range may be larger).

    Also writes ``capture_range.csv`` (`CAPTURE_COLUMNS`),
    ``similarity_landscape.md`` (a, b, width per measure and axis; the width
    table measures x axes; for each learned measure, on how many of the six
    axes its width is larger than each other measure's, and whether that is
    most axes, more than three) and ``similarity_landscape.png`` (one panel
    per axis, every measure min-max normalised over that axis).

    Returns a dict: ``csv``, ``markdown``, ``png`` (paths), ``landscape``
    (`landscape`'s report), ``capture_range`` ({measure: {axis: (a, b)}}),
    ``width`` ({measure: {axis: a + b}}), ``wider_axes`` ({learned measure:
    {other measure: axes where it is wider}}), ``most_axes`` (same keys,
    wider on more than half of the axes), ``learned`` (the learned names).
    """
    if not isinstance(measures, Mapping) or not measures:
        raise InputError("measures must be a non-empty dict name -> similarity name or callable (a learned model)")
    measures, rtol = dict(measures), _nonnegative(rtol, "rtol")
    report = landscape(volume, xray, detector, true_pose, out_dir, similarities=measures, renderer=renderer,
                       rotation_range_deg=rotation_range_deg, translation_range_mm=translation_range_mm,
                       n_points=n_points, level=level)
    names = list(measures)
    learned = [m for m in names if not isinstance(measures[m], str)]
    axis_offsets = {axis: np.array(report["offsets"]["rotation" if k < 3 else "translation"])
                    for k, axis in enumerate(AXES)}
    ranges = {m: {axis: capture_range(axis_offsets[axis], report["values"][m][axis], rtol) for axis in AXES}
              for m in names}
    width = {m: {axis: ranges[m][axis][0] + ranges[m][axis][1] for axis in AXES} for m in names}
    wider = {m: {o: sum(width[m][axis] > width[o][axis] for axis in AXES) for o in names if o != m}
             for m in learned}
    ties = {m: {o: sum(width[m][axis] == width[o][axis] for axis in AXES) for o in names if o != m}
            for m in learned}
    most = {m: {o: k > len(AXES) / 2 for o, k in wider[m].items()} for m in learned}

    out = Path(out_dir)
    csv_path, md_path, png_path = (out / f for f in ("capture_range.csv", "similarity_landscape.md",
                                                     "similarity_landscape.png"))
    rows = []
    for m in names:
        for k, axis in enumerate(AXES):
            a, b = ranges[m][axis]
            rows.append([m, "learned" if m in learned else "image", axis, "deg" if k < 3 else "mm", round_cell(a, 6),
                         round_cell(b, 6), round_cell(a + b, 6), round_cell(report["value_at_zero"][m], 8),
                         round_cell(report["argmax"][m][axis], 6)])
    write_csv(csv_path, CAPTURE_COLUMNS, rows)
    _landscape_markdown(md_path, report, names, learned, measures, ranges, width, wider, ties,
                        (rotation_range_deg, translation_range_mm, n_points, level, renderer))
    _landscape_png(png_path, report, names, axis_offsets)
    return {"csv": csv_path, "markdown": md_path, "png": png_path, "landscape": report,
            "capture_range": ranges, "width": width, "wider_axes": wider, "most_axes": most, "learned": learned}


def _kind(value) -> str:
    info = getattr(value, "info", None) or {}
    if isinstance(value, str) or "embedding" not in info:
        return f"image similarity {value}" if isinstance(value, str) else f"learned ({type(value).__name__})"
    return f"learned ({info['embedding']} embedding, {info.get('groups', '?')} groups)"


def _landscape_markdown(path: Path, report, names, learned, measures, ranges, width, wider, ties, setup) -> None:
    rot, trans, n_points, level, renderer = setup
    lines = ["# Capture range of the similarities around the true pose", "",
             f"One pose parameter varied at a time (rotations rx, ry, rz of the CT about its centre within "
             f"+-{rot:g} deg, translations tx, ty, tz within +-{trans:g} mm, {n_points} samples per axis; renderer "
             f"{renderer}, level {level:g}); curves in landscape.csv / landscape.png.", "",
             "Capture range [-a, +b]: the interval about the truth (offset 0) on which the similarity falls "
             "monotonically moving away from 0 on each side; a = b = 0 when 0 is no local maximum. A width equal to "
             "twice the range is monotone over all that was sampled.", ""]
    lines += [f"- {m}: {_kind(measures[m])}" for m in names] + [""]
    lines += ["## Capture range per axis", ""]
    table = []
    for m in names:
        for k, axis in enumerate(AXES):
            a, b = ranges[m][axis]
            table.append([m, axis, "deg" if k < 3 else "mm", fmt(a, 2), fmt(b, 2), fmt(a + b, 2),
                          fmt(report["value_at_zero"][m], 6)])
    lines += markdown_table(["measure", "axis", "unit", "a", "b", "width a + b", "value at 0"], table)
    lines += ["", "## Width a + b (deg for rx, ry, rz; mm for tx, ty, tz)", ""]
    lines += markdown_table(["measure", *AXES], [[m] + [fmt(width[m][axis], 2) for axis in AXES] for m in names])
    if learned:
        lines += ["", f"## Axes (of {len(AXES)}) on which each learned measure's capture range is wider", ""]
        lines += markdown_table(["learned measure"] + [f"vs {o}" for o in names],
                                [[m] + [("-" if o == m else f"{wider[m][o]} (ties {ties[m][o]})") for o in names]
                                 for m in learned])
        lines += [""]
        for m in learned:
            for o in names:
                if o != m:
                    verdict = "most axes" if wider[m][o] > len(AXES) / 2 else "not most axes"
                    lines.append(f"- {m} vs {o}: wider on {wider[m][o]} of {len(AXES)} axes, equal on "
                                 f"{ties[m][o]} ({verdict})")
    path.write_text("\n".join(lines) + "\n")


def _landscape_png(path: Path, report, names, axis_offsets) -> None:
    panels = {}
    for k, axis in enumerate(AXES):
        series = {}
        for m in names:
            v = np.asarray(report["values"][m][axis], dtype=np.float64)
            finite = v[np.isfinite(v)]
            span = float(finite.max() - finite.min()) if finite.size else 0.0
            series[m] = (axis_offsets[axis], (v - finite.min()) / span if span > 0 else np.zeros_like(v))
        panels[axis] = line_plot(series, title=f"{axis}: similarity, min-max normalised",
                                 xlabel=f"offset from the true pose ({'deg' if k < 3 else 'mm'})",
                                 ylabel="normalised similarity", size=PLOT_SIZE)
    rows = [np.concatenate([panels[r], panels[t]], axis=1) for r, t in zip(AXES[:3], AXES[3:])]
    save_png(path, stack_panels(rows))


# --------------------------------------------------------------------------- convergence


def _median_vs_iteration(curves: list[np.ndarray]) -> np.ndarray:
    """Median over starts of mTRE (per iteration), each curve held at its last value after it ends."""
    length = max(len(c) for c in curves)
    padded = np.stack([np.concatenate([c, np.full(length - len(c), c[-1])]) for c in curves])
    return np.median(padded, axis=0)


def _median_vs_time(times: list[np.ndarray], curves: list[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Median over starts of the mTRE at each time of ``grid``: the last value recorded by then (a step function)."""
    at = [c[np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(c) - 1)] for t, c in zip(times, curves)]
    return np.median(np.stack(at), axis=0)


def _basin(curve: list[tuple], basin_mm: float) -> tuple[float, float]:
    """(iteration, seconds) of the first record with mTRE < basin_mm; (inf, inf) if none."""
    for iteration, seconds, mtre_mm, _ in curve:
        if mtre_mm < basin_mm:
            return float(iteration), float(seconds)
    return math.inf, math.inf


def similarity_convergence(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    similarity,
    out_dir,
    *,
    optimizers: Sequence[str] = ("gd", "adam", "lm"),
    n: int = 10,
    max_rotation_deg: float = 20.0,
    max_translation_mm: float = 30.0,
    seed: int = 0,
    levels: Sequence[float] = (4.0,),
    iterations: int = 50,
    basin_mm: float = BASIN_MM,
    options: Mapping | None = None,
    ct_name: str = "built-in chest phantom",
    log: Callable[[str], None] | None = print,
) -> dict:
    """mTRE vs iteration and vs time per optimiser on ``similarity`` alone, from the same seeded starts.

    ``similarity``: a `LearnedSimilarity` (or any similarity registration
    takes). Starts: ``perturb_pose(true_pose, random_motions(n,
    max_rotation_deg, max_translation_mm, seed), volume.center)``. Each
    optimiser registers each start alone with
    ``make_options(**options, optimizer=name, similarity=similarity,
    levels=levels, max_iterations=iterations)`` (no polish: the same as
    ``register_learned(..., polish=None)``), and its callback records the
    mTRE (mm, `CONVERGENCE_POINTS` CT points) of the best pose so far and the
    elapsed seconds after every iteration (levels one after the other).

    Writes into ``out_dir``: ``similarity_convergence.csv``
    (`CONVERGENCE_COLUMNS`, every curve), ``similarity_convergence_starts.csv``
    (`CONVERGENCE_START_COLUMNS`), ``similarity_convergence.md`` (per
    optimiser the median iterations and seconds to the basin, the fraction of
    starts that reach it, the median final mTRE and time) and
    ``similarity_convergence.png`` (median mTRE vs iteration, and vs seconds
    on a common grid, each start's value the last one it recorded by then).
    On Ctrl-C the finished curves go to ``similarity_convergence.partial.csv``.

    Returns a dict: ``csv``, ``starts_csv``, ``markdown``, ``png`` (paths),
    ``summary`` ({optimiser: n, median_basin_iteration,
    median_basin_seconds, basin_rate, median_final_mtre_mm, median_seconds,
    median_iterations}) and ``curves`` ({optimiser: per start a list of
    (iteration, seconds, mtre_mm, similarity)}).
    """
    from ..registration.engine import register
    from ..registration.options import make_options

    xray, pose = _check_case(volume, xray, detector, true_pose)
    names = _names(optimizers, "optimizers")
    basin_mm = _nonnegative(basin_mm, "basin_mm")
    extra = _settings(options)
    fixed = sorted(set(extra) & set(_FIXED))
    if fixed:
        raise InputError(f"options must not set {fixed}: they are the arguments optimizers, similarity, levels and "
                         "iterations")
    opts = {name: make_options(**extra, optimizer=name, similarity=similarity, levels=levels,
                               max_iterations=iterations) for name in names}  # every setting checked first
    (n, max_rot, max_trans, seed), starts, points, start_mtre = _seeded_starts(
        volume, pose, n, max_rotation_deg, max_translation_mm, seed, CONVERGENCE_POINTS)
    out = Path(out_dir)
    curves: dict[str, list[list[tuple]]] = {name: [] for name in names}
    starts_rows: list[dict] = []

    def curve_rows() -> list[list]:
        return [[name, i, it, round_cell(s, 4), round_cell(m, 5), round_cell(v, 8)]
                for name in names for i, curve in enumerate(curves[name]) for it, s, m, v in curve]

    with keep_rows_on_interrupt(out / "similarity_convergence.partial.csv", CONVERGENCE_COLUMNS, curve_rows):
        for name in names:
            for i in range(n):
                seen: list[tuple] = []

                def record(progress, seen=seen) -> None:
                    value = float(evaluation.mtre(progress.pose.to(torch.float64), pose, points))
                    seen.append((len(seen) + 1, float(progress.elapsed), value, float(progress.similarity)))

                result = register(volume, xray, detector, starts[i], opts[name], callback=record)
                curve = [(0, 0.0, start_mtre[i], float(result.initial_similarity))] + seen
                curves[name].append(curve)
                basin_it, basin_s = _basin(curve, basin_mm)
                starts_rows.append({
                    "optimizer": name, "start": i, "start_mtre_mm": start_mtre[i],
                    "final_mtre_mm": float(evaluation.mtre(result.pose.to(torch.float64), pose, points)),
                    "iterations": int(result.iterations), "seconds": float(result.seconds),
                    "basin_iteration": basin_it, "basin_seconds": basin_s, "converged": bool(result.converged),
                    "stop_reason": result.stop_reason})
            if log is not None:
                finals = [r["final_mtre_mm"] for r in starts_rows if r["optimizer"] == name]
                log(f"{name}: {n} starts, median final mTRE {statistics.median(finals):.2f} mm")

    summary = {}
    for name in names:
        rows = [r for r in starts_rows if r["optimizer"] == name]
        basin = np.array([r["basin_iteration"] for r in rows])
        summary[name] = {
            "n": len(rows), "median_basin_iteration": float(np.median(basin)),
            "median_basin_seconds": float(np.median([r["basin_seconds"] for r in rows])),
            "basin_rate": float(np.mean(np.isfinite(basin))),
            "median_final_mtre_mm": float(statistics.median(r["final_mtre_mm"] for r in rows)),
            "median_seconds": float(statistics.median(r["seconds"] for r in rows)),
            "median_iterations": float(statistics.median(r["iterations"] for r in rows))}

    out.mkdir(parents=True, exist_ok=True)
    csv_path, starts_path = out / "similarity_convergence.csv", out / "similarity_convergence_starts.csv"
    md_path, png_path = out / "similarity_convergence.md", out / "similarity_convergence.png"
    write_csv(csv_path, CONVERGENCE_COLUMNS, curve_rows())
    write_csv(starts_path, CONVERGENCE_START_COLUMNS,
              [[round_cell(r[c], 4) if isinstance(r[c], float) else r[c] for c in CONVERGENCE_START_COLUMNS]
               for r in starts_rows])
    first = opts[names[0]]
    lines = [
        "# Convergence on the learned similarity", "",
        f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}; similarity {first.similarity_name} alone "
        f"(no polish), levels {', '.join(f'{f:g}' for f in first.levels)}, at most {first.max_iterations} "
        f"iterations per level, renderer {first.renderer}",
        f"- starts: {n} random rigid motions of the CT about its centre, each rotation-vector component uniform in "
        f"+-{max_rot:g} deg and each translation component in +-{max_trans:g} mm (seed {int(seed)}; median start "
        f"mTRE {fmt(np.median(start_mtre), 2)} mm), the same for every optimiser, one at a time",
        f"- mTRE of the best pose so far after every iteration over {len(points)} CT points; basin = mTRE < "
        f"{basin_mm:g} mm (iteration 0 is the start; inf: the median start never got there); device "
        f"{volume.mu.device}", ""]
    table = [[name, s["n"], fmt(s["median_basin_iteration"], 1), fmt(s["median_basin_seconds"], 2),
              f"{100 * s['basin_rate']:.0f}%", fmt(s["median_final_mtre_mm"], 2), fmt(s["median_iterations"], 0),
              fmt(s["median_seconds"], 2)] for name, s in summary.items()]
    lines += markdown_table(["optimiser", "n", "iterations to the basin (median)", "seconds to the basin (median)",
                             "reached the basin", "median final mTRE (mm)", "median iterations",
                             "median time (s)"], table)
    md_path.write_text("\n".join(lines) + "\n")

    by_iteration, by_time = {}, {}
    end = max(c[-1][1] for name in names for c in curves[name])
    grid = np.linspace(0.0, end if end > 0 else 1.0, 201)
    for name in names:
        mtres = [np.array([m for _, _, m, _ in c]) for c in curves[name]]
        times = [np.array([s for _, s, _, _ in c]) for c in curves[name]]
        median = _median_vs_iteration(mtres)
        by_iteration[name] = (np.arange(median.size, dtype=np.float64), median)
        by_time[name] = (grid, _median_vs_time(times, mtres, grid))
    panels = [line_plot(by_iteration, title=f"Median mTRE of the best pose so far, {n} starts",
                        xlabel="iteration (levels one after the other)", ylabel="mTRE (mm)", size=PLOT_SIZE),
              line_plot(by_time, title="Median mTRE vs time", xlabel="seconds", ylabel="mTRE (mm)", size=PLOT_SIZE)]
    save_png(png_path, stack_panels(panels))
    return {"csv": csv_path, "starts_csv": starts_path, "markdown": md_path, "png": png_path, "summary": summary,
            "curves": curves}
