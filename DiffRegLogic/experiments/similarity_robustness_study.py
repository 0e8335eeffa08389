"""Robustness of learned similarities to the starting pose: a table from seeded starts, per variant.

`similarity_robustness`: per variant (an image similarity, or a learned one
with or without a polish) the success rate, median mTRE and time from the
same seeded starts. Learned variants run through
`DiffRegLogic.learning.similarity_inference.register_learned`, image ones
through `DiffRegLogic.registration.register`, all one start at a time (so the
seconds compare). The starts are drawn as `robustness` draws them
(`_seeded_starts`, shared with `similarity_study.similarity_convergence`).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import evaluation
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..volume.ct import Volume
from .common import N_TARGET_POINTS, PLOT_SIZE, _check_case, _count, _nonnegative, keep_rows_on_interrupt
from .reports import fmt, line_plot, markdown_table, round_cell, save_png, stack_panels, write_csv

__all__ = ["similarity_robustness", "SIMILARITY_ROBUSTNESS_COLUMNS", "MTRE_CURVE_MAX_MM"]

SIMILARITY_ROBUSTNESS_COLUMNS = (
    "variant", "start", "start_mtre_mm", "learned_mtre_mm", "final_mtre_mm", "rotation_error_deg",
    "translation_error_mm", "final_similarity", "iterations", "seconds", "converged", "stop_reason", "stages")
"""Columns of ``similarity_robustness.csv``; ``learned_mtre_mm``: after the learned stage (nan for image
variants), ``seconds``: wall time of the whole registration (all stages)."""
MTRE_CURVE_MAX_MM = 20.0
"""The success curve of `similarity_robustness` spans final mTRE thresholds 0..this (mm)."""
_MISSING = object()


def _seeded_starts(volume, pose, n, max_rotation_deg, max_translation_mm, seed, n_points: int):
    """Checked (n, max_rot, max_trans, seed), starts (n, 4, 4), CT points (n_points, 3) and the start mTREs."""
    n = _count(n, "n")
    max_rot = _nonnegative(max_rotation_deg, "max_rotation_deg")
    max_trans = _nonnegative(max_translation_mm, "max_translation_mm")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    starts = perturb_pose(pose, random_motions(n, max_rot, max_trans, int(seed)), volume.center.to(torch.float64).cpu())
    points = evaluation.target_points(volume, n_points).to(torch.float64).cpu()
    return (n, max_rot, max_trans, int(seed)), starts, points, evaluation.mtre(starts, pose, points).tolist()


def _settings(options) -> dict:
    """``options`` (None or a dict of `make_options` settings) as a new dict."""
    if options is not None and not isinstance(options, Mapping):
        raise InputError(f"options must be a dict of registration settings, got {type(options).__name__}")
    return dict(options or {})


def _variants(variants, options: dict | None) -> list[dict]:
    """Checked variants: name, learned flag, similarity, polish and the `RegistrationOptions` (before any work)."""
    from ..learning.similarity_inference import POLISH_DEFAULT, POLISH_LEVELS, LearnedSimilarity
    from ..registration.options import make_options
    from ..similarity.registry import SIMILARITIES

    if not isinstance(variants, Mapping) or not variants:
        raise InputError("variants must be a non-empty dict name -> settings, e.g. {'zncc': {'similarity': 'zncc'}}")
    common = _settings(options)
    out = []
    for name, settings in variants.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"each variant needs a non-empty name, got {name!r}")
        if not isinstance(settings, Mapping):
            raise InputError(f"variant {name!r} must be a dict of settings, got {type(settings).__name__}")
        values = {**common, **settings}
        similarity = values.pop("similarity", "zncc")
        polish = values.pop("polish", _MISSING)
        polish_levels = tuple(values.pop("polish_levels", POLISH_LEVELS))
        learned = isinstance(similarity, LearnedSimilarity)
        polish = (POLISH_DEFAULT if learned else None) if polish is _MISSING else polish
        polish = None if isinstance(polish, str) and polish.lower() == "none" else polish
        try:
            opts = make_options(similarity=similarity, **values)
            if polish is not None and not learned:
                raise InputError("a polish follows a learned similarity only (load_similarity); drop 'polish'")
            if polish is not None and polish not in SIMILARITIES:
                raise InputError(f"unknown polish similarity {polish!r}; choose None or one of "
                                 f"{', '.join(sorted(SIMILARITIES))}")
            if polish is not None:  # the polish's settings (an LM polish needs a residual)
                make_options(opts, similarity=polish, levels=polish_levels, n_starts=1, search="local")
        except InputError as exc:
            raise InputError(f"variant {name!r}: {exc}") from None
        out.append({"name": name, "learned": learned, "similarity": similarity, "polish": polish,
                    "polish_levels": polish_levels, "options": opts})
    return out


def _stages(variant: dict) -> str:
    if not variant["learned"]:
        return variant["options"].similarity_name
    return "learned" + (f"+{variant['polish']}" if variant["polish"] else "")


_DIGITS = {"start_mtre_mm": 4, "learned_mtre_mm": 4, "final_mtre_mm": 4, "rotation_error_deg": 4,
           "translation_error_mm": 4, "final_similarity": 6, "seconds": 4}


def _csv_rows(rows: list[dict]) -> list[list]:
    return [[round_cell(r[c], _DIGITS[c]) if c in _DIGITS else r[c] for c in SIMILARITY_ROBUSTNESS_COLUMNS]
            for r in rows]


def _median(values) -> float | None:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(statistics.median(finite)) if finite else None


def _robustness_summary(rows: list[dict], success_mm: float) -> dict:
    final = np.array([r["final_mtre_mm"] for r in rows], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        success = float(np.mean(np.isfinite(final) & (final < success_mm)))
    return {"n": len(rows), "success_rate": success,
            "median_final_mtre_mm": _median(final), "median_start_mtre_mm": _median(r["start_mtre_mm"] for r in rows),
            "median_learned_mtre_mm": _median(r["learned_mtre_mm"] for r in rows),
            "median_seconds": float(statistics.median(r["seconds"] for r in rows)),
            "converged_rate": float(np.mean([r["converged"] for r in rows]))}


def similarity_robustness(
    volume: Volume,
    xray,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    variants: Mapping[str, Mapping],
    n: int = 100,
    max_rotation_deg: float = 45.0,
    max_translation_mm: float = 60.0,
    seed: int = 0,
    success_mm: float = 2.0,
    options: Mapping | None = None,
    ct_name: str = "built-in chest phantom",
    log: Callable[[str], None] | None = print,
) -> dict:
    """Registrations from ``n`` seeded starts per variant: success rate, median mTRE and time (a robustness table).

    ``variants``: name -> settings, e.g. ``{"similarity": "zncc"}``,
    ``{"similarity": learned, "polish": "zncc"}`` or ``{"similarity":
    learned, "polish": None}`` (a learned similarity's polish defaults to
    `POLISH_DEFAULT`); any other key is a `make_options` setting, applied on
    top of ``options`` (the settings shared by every variant). Starts:
    ``perturb_pose(true_pose, random_motions(n, max_rotation_deg,
    max_translation_mm, seed), volume.center)``, the same for every variant.
    Each start registers on its own: learned variants with
    `register_learned`, the others with `register`. Per start: start, learned
    stage (learned variants) and final mTRE over `N_TARGET_POINTS` CT points,
    rotation / translation error at the CT centre, wall seconds. A start
    succeeds when its final mTRE < ``success_mm``.

    Writes into ``out_dir``: ``similarity_robustness.csv``
    (`SIMILARITY_ROBUSTNESS_COLUMNS`), ``similarity_robustness.md`` (setup and
    one row per variant) and ``similarity_robustness.png`` (start vs final
    mTRE per start, and the fraction of starts below each final mTRE in
    0..`MTRE_CURVE_MAX_MM`). On Ctrl-C the finished rows go to
    ``similarity_robustness.partial.csv`` (`keep_rows_on_interrupt`).

    Returns a dict: ``csv``, ``markdown``, ``png`` (paths), ``summary``
    ({variant: n, success_rate, median_final_mtre_mm, median_start_mtre_mm,
    median_learned_mtre_mm, median_seconds, converged_rate}), ``seconds``.
    """
    from ..learning.similarity_inference import register_learned
    from ..registration.engine import register

    xray, pose = _check_case(volume, xray, detector, true_pose)
    if _nonnegative(success_mm, "success_mm") <= 0:
        raise InputError("success_mm must be a positive mTRE threshold (mm)")
    success_mm = float(success_mm)
    checked = _variants(variants, options)
    (n, max_rot, max_trans, seed), starts, points, start_mtre = _seeded_starts(
        volume, pose, n, max_rotation_deg, max_translation_mm, seed, N_TARGET_POINTS)
    center, out = volume.center.to(torch.float64).cpu(), Path(out_dir)
    rows: list[dict] = []
    t_all = time.perf_counter()
    with keep_rows_on_interrupt(out / "similarity_robustness.partial.csv", SIMILARITY_ROBUSTNESS_COLUMNS,
                                lambda: _csv_rows(rows)):
        for variant in checked:
            for i in range(n):
                t0 = time.perf_counter()
                if variant["learned"]:
                    result = register_learned(volume, xray, detector, starts[i], variant["options"],
                                              variant["similarity"], polish=variant["polish"],
                                              polish_levels=variant["polish_levels"])
                else:
                    result = register(volume, xray, detector, starts[i], variant["options"])
                seconds = time.perf_counter() - t0
                final = result.pose.to(torch.float64)
                learned_mtre = math.nan
                if variant["learned"]:
                    first = torch.tensor(result.stages[0]["camera_from_world"], dtype=torch.float64)
                    learned_mtre = float(evaluation.mtre(first, pose, points))
                rows.append({
                    "variant": variant["name"], "start": i, "start_mtre_mm": start_mtre[i],
                    "learned_mtre_mm": learned_mtre, "final_mtre_mm": float(evaluation.mtre(final, pose, points)),
                    "rotation_error_deg": float(evaluation.rotation_error_deg(final, pose)),
                    "translation_error_mm": float(evaluation.translation_error_mm(final, pose, center)),
                    "final_similarity": float(result.similarity), "iterations": int(result.iterations),
                    "seconds": seconds, "converged": bool(result.converged), "stop_reason": result.stop_reason,
                    "stages": _stages(variant)})
                if log is not None and ((i + 1) % max(1, n // 10) == 0 or i + 1 == n):
                    done = [r for r in rows if r["variant"] == variant["name"]]
                    rate = np.mean([r["final_mtre_mm"] < success_mm for r in done])
                    log(f"{variant['name']}: {len(done)}/{n} starts, success (mTRE < {success_mm:g} mm) {rate:.0%}, "
                        f"{time.perf_counter() - t_all:.1f} s")
    seconds = time.perf_counter() - t_all
    by_variant = {v["name"]: [r for r in rows if r["variant"] == v["name"]] for v in checked}
    summary = {name: _robustness_summary(r, success_mm) for name, r in by_variant.items()}

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (out / "similarity_robustness.csv", out / "similarity_robustness.md",
                                   out / "similarity_robustness.png")
    write_csv(csv_path, SIMILARITY_ROBUSTNESS_COLUMNS, _csv_rows(rows))
    _robustness_markdown(md_path, checked, summary, (n, max_rot, max_trans, seed, success_mm, ct_name, seconds),
                         detector, start_mtre, len(points), volume)
    _robustness_png(png_path, by_variant, n)
    return {"csv": csv_path, "markdown": md_path, "png": png_path, "summary": summary, "seconds": seconds}


def _robustness_markdown(path: Path, checked, summary, setup, detector, start_mtre, n_points, volume) -> None:
    n, max_rot, max_trans, seed, success_mm, ct_name, seconds = setup
    lines = ["# Robustness of the learned similarity to the starting pose", "",
             f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}, SDD {float(detector.sdd):g} mm",
             f"- starts: {n} random rigid motions of the CT about its centre, each rotation-vector component uniform "
             f"in +-{max_rot:g} deg and each translation component in +-{max_trans:g} mm (seed {seed}; median start "
             f"mTRE {fmt(np.median(start_mtre), 2)} mm), the same for every variant", ""]
    for v in checked:
        o = v["options"]
        polish = f", then a {v['polish']} polish at full size" if v["polish"] else ""
        lines.append(f"- {v['name']}: {'learned similarity' if v['learned'] else o.similarity_name}, optimiser "
                     f"{o.optimizer}, levels {', '.join(f'{f:g}' for f in o.levels)}, at most {o.max_iterations} "
                     f"iterations per level, renderer {o.renderer}{polish}")
    lines += [f"- success = final mTRE < {success_mm:g} mm over {n_points} CT points; one start at a time; time = "
              f"wall seconds per registration, all stages; device {volume.mu.device}, total {seconds:.1f} s", ""]
    table = [[v["name"], _stages(v), s["n"], f"{100 * s['success_rate']:.0f}%", fmt(s["median_final_mtre_mm"], 2),
              fmt(s["median_learned_mtre_mm"], 2), fmt(s["median_seconds"], 2), f"{100 * s['converged_rate']:.0f}%"]
             for v, s in ((v, summary[v["name"]]) for v in checked)]
    lines += markdown_table(["variant", "stages", "n", f"success < {success_mm:g} mm", "median final mTRE (mm)",
                             "median learned-stage mTRE (mm)", "median time (s)", "converged"], table)
    path.write_text("\n".join(lines) + "\n")


def _robustness_png(path: Path, by_variant: dict, n: int) -> None:
    scatter, success, top = {}, {}, 0.0
    xs = np.linspace(0.0, MTRE_CURVE_MAX_MM, 201)
    for name, rows in by_variant.items():
        order = sorted(rows, key=lambda r: r["start_mtre_mm"])
        x = np.full(2 * len(order), np.nan)  # NaN between the points: each start a dot
        y = np.full(2 * len(order), np.nan)
        x[::2] = [r["start_mtre_mm"] for r in order]
        y[::2] = [r["final_mtre_mm"] for r in order]
        scatter[name] = (x, y)
        top = max([top] + [r["start_mtre_mm"] for r in rows])
        final = np.array([r["final_mtre_mm"] for r in rows], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            success[name] = (xs, np.array([np.mean(np.isfinite(final) & (final < t)) for t in xs]))
    scatter["final = start"] = (np.array([0.0, top]), np.array([0.0, top]))
    panels = [line_plot(scatter, title=f"Final vs start mTRE, {n} starts per variant", xlabel="start mTRE (mm)",
                        ylabel="final mTRE (mm)", size=PLOT_SIZE),
              line_plot(success, title="Fraction of starts below a final mTRE", xlabel="final mTRE (mm)",
                        ylabel="fraction of starts", size=PLOT_SIZE)]
    save_png(path, stack_panels(panels))
