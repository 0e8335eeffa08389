"""Registration against realistic simulated X-rays: each degradation alone and all together, per registration variant.

For each preset of `DiffRegLogic.physics.xray_simulation.PRESETS` the X-ray
is simulated from the CT at the true pose; the registration gets the
model CT (cropped under truncation) and the stored image turned into the
line-integral convention (`as_line_integral`). Each variant (a name -> a
dict of `make_options` settings, `VARIANTS` the built-in table) registers
it from the same seeded starts, one start at a time with
`DiffRegLogic.registration.register`.

Writes ``realism.csv`` (one row per preset, variant and start),
``realism.md`` (the presets, then one summary row per preset and variant)
and ``realism.png`` (a row per preset: the stored image, the image the
registration gets ("registered"), the model's DRR at the true pose ("model")).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .. import evaluation
from ..drr.rendering import render
from ..errors import InputError
from ..figures.composites import grey, panel_row
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..physics.processing import CONVENTIONS
from ..physics.xray_simulation import PRESETS, preset, simulate_xray
from ..registration.engine import register
from ..registration.options import make_options
from ..similarity.metrics import image_metrics
from ..volume.ct import Volume
from ..volume.hu import HUToMu, hu_from_mu
from . import REALISM_VARIANTS
from .common import N_TARGET_POINTS, _count, _names, _nonnegative, _true_pose, keep_rows_on_interrupt
from .reports import fmt, markdown_table, round_cell, save_png, stack_panels, write_csv

Log = Callable[[str], None]

VARIANTS = REALISM_VARIANTS
"""Built-in registration variants: name -> `make_options` settings on top of the experiment's options."""
CONVENTION_MODES = ("known", "detect")
"""How the stored image is turned into a line integral: from its known convention, or detected from the image."""
I0_PERCENTILE = 99.9
"""Percentile taken as the unattenuated level I0 of a raw image, and as the reflection level of an inverted log."""
RAW_FLOOR = 1e-6
"""Raw values are floored at this fraction of their maximum before -log."""
REALISM_COLUMNS = ("preset", "variant", "start", "start_mtre_mm", "final_mtre_mm", "rotation_error_deg",
                   "translation_error_mm", "final_similarity", "ncc", "ssim", "css", "converged", "seconds")
"""Columns of ``realism.csv``; ncc/ssim/css: the model's DRR at the registered pose against the X-ray the
registration got (the degraded image as a line integral)."""


def _known_line_integral(image: torch.Tensor, convention: str) -> torch.Tensor:
    """The stored image as a line integral (bone bright), from its known convention (up to an offset and scale)."""
    v = image.to(torch.float64)
    if convention == "line_integral":
        return v
    if convention == "inverted":  # log, bone dark: reflect about a high percentile
        return torch.quantile(v.reshape(-1), I0_PERCENTILE / 100) - v
    if convention == "inverted_intensity":  # raw, bone bright: reflect about the maximum into a raw intensity
        v = v.max() - v
    top = float(v.max())
    if top <= 0:
        raise InputError(f"a raw ({convention}) image needs positive values for -log(I/I0); its maximum is {top:g}")
    v = v.clamp_min(RAW_FLOOR * top)
    return -torch.log(v / torch.quantile(v.reshape(-1), I0_PERCENTILE / 100))


def as_line_integral(image: torch.Tensor, convention: str, mode: str = "known", drr=None) -> torch.Tensor:
    """(H, W) stored image -> the line-integral convention the registration expects (same dtype).

    ``mode="known"``: from ``convention`` (one of `CONVENTIONS`): kept;
    inverted log reflected about its `I0_PERCENTILE` percentile; raw
    -log(I / I0) with I0 its `I0_PERCENTILE` percentile (inverted raw first
    reflected about its maximum). ``mode="detect"``: ``convention`` is
    ignored; `DiffRegLogic.xray.convention.detect_convention` decides from
    the image and ``drr`` (H, W) (a DRR at the start pose, or None) and
    `apply_convention` converts.
    """
    if mode not in CONVENTION_MODES:
        raise InputError(f"unknown convention mode {mode!r}; choose one of {', '.join(CONVENTION_MODES)}")
    if mode == "detect":
        return torch.as_tensor(_detected(image, drr)[0], dtype=image.dtype)
    if convention not in CONVENTIONS:
        raise InputError(f"unknown intensity convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    return _known_line_integral(image, convention).to(image.dtype)


def _detected(image: torch.Tensor, drr) -> tuple[torch.Tensor, str]:
    """(line integral, detected convention) by `DiffRegLogic.xray.convention`."""
    try:
        from ..xray import convention as detection
    except ImportError:
        raise InputError("convention='detect' needs DiffRegLogic.xray.convention, which this installation "
                         "lacks; use convention='known'") from None
    cpu = image.detach().cpu()
    found = detection.detect_convention(cpu, None if drr is None else drr.detach().cpu())
    return detection.apply_convention(cpu, found.convention), found.convention


def variant_table(variants) -> dict[str, dict]:
    """{name: settings} of ``variants``: names of `VARIANTS`, or a mapping name -> `make_options` settings."""
    if isinstance(variants, Mapping):
        table = {str(k): dict(v or {}) for k, v in variants.items()}
        if not table:
            raise InputError("variants is empty: give at least one (name -> make_options settings)")
        return table
    names = _names(variants, "variants")
    for name in names:
        if name not in VARIANTS:
            raise InputError(f"unknown registration variant {name!r}; choose from {', '.join(VARIANTS)}")
    return {name: dict(VARIANTS[name]) for name in names}


def realism(
    volume: Volume,
    detector: Detector,
    true_pose,
    out_dir,
    *,
    presets: Sequence[str] = tuple(PRESETS),
    variants: Sequence[str] | Mapping[str, dict] = ("zncc",),
    n: int = 10,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 20.0,
    seed: int = 0,
    success_mm: float = 2.0,
    options: dict | None = None,
    convention: str = "known",
    hu_to_mu: HUToMu | None = None,
    ct_name: str = "built-in chest phantom",
    log: Log | None = print,
) -> dict:
    """Register simulated X-rays of each preset with each variant from ``n`` seeded starts.

    ``volume``: the monochromatic CT (its HU are recovered with
    ``hu_to_mu``, the `HUToMu` it was built with). Per preset the X-ray is
    ``simulate_xray(hu, affine, detector, true_pose, preset(name, seed))``,
    converted by ``as_line_integral(image, its convention, convention)``.
    Starts: ``perturb_pose(true_pose, random_motions(n, max_rotation_deg,
    max_translation_mm, seed), volume.center)``, the same for every preset and
    variant. Options per variant: ``make_options(**options, **settings)``;
    ``register(model, xray, detector, start, options, mask=field)`` with
    ``field`` the simulation's collimation mask (None without collimation:
    a real XA/RF DICOM carries the shutter tags the reader turns into this
    mask). Errors against the
    true pose over `N_TARGET_POINTS` points of the full CT; success = final
    mTRE < ``success_mm``; NCC/SSIM/CSS of the model's DRR at the registered
    pose against the converted X-ray within ``field`` (the poster's
    comparison with the real image); seconds per registration.

    Returns {"csv", "markdown", "png" (paths), "summary" {preset: {variant:
    {n, success_rate, median_final_mtre_mm, median_ncc, median_ssim,
    median_css, median_seconds}}}, "presets" {preset: {convention,
    converted_as, instrument_coverage, ncc_at_truth, model_slices}}, "seconds"}.
    With ``convention="detect"`` the convention is detected once per preset
    from the image and the model's DRR at the first start.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    preset_names = _names(presets, "presets")
    for name in preset_names:
        preset(name)  # InputError naming the known presets
    table = variant_table(variants)
    n = _count(n, "n")
    max_rot = _nonnegative(max_rotation_deg, "max_rotation_deg")
    max_trans = _nonnegative(max_translation_mm, "max_translation_mm")
    success_mm = _nonnegative(success_mm, "success_mm")
    if convention not in CONVENTION_MODES:
        raise InputError(f"unknown convention mode {convention!r}; choose one of {', '.join(CONVENTION_MODES)}")
    base = dict(options or {})
    # "model": "matched" (not a registration option): the model is polychromatic at the X-ray's tube voltage when
    # the X-ray is, as a user who knows the tube would choose (`--renderer polychromatic --kvp`)
    matched = {name: settings.get("model") == "matched" for name, settings in table.items()}
    opts = {name: make_options(**{**base, **{k: v for k, v in settings.items() if k != "model"}})
            for name, settings in table.items()}
    pose = _true_pose(true_pose)
    out = Path(out_dir)  # made only when the results are written

    first = next(iter(opts.values()))
    render_options = first.render_options()
    hu = hu_from_mu(volume.mu.detach().to(torch.float64).cpu(), hu_to_mu)
    center = volume.center.to(torch.float64).cpu()
    starts = perturb_pose(pose, random_motions(n, max_rot, max_trans, int(seed)), center)
    points = evaluation.target_points(volume, N_TARGET_POINTS).to(torch.float64).cpu()
    start_mtre = evaluation.mtre(starts, pose, points).tolist()

    t_all = time.perf_counter()
    rows: list[dict] = []
    facts: dict[str, dict] = {}
    panels = []
    with keep_rows_on_interrupt(out / "realism.partial.csv", REALISM_COLUMNS, lambda: _cells(rows)):
        for name in preset_names:
            sim = simulate_xray(hu, volume.affine.cpu(), detector, pose, preset(name, int(seed)), hu_to_mu=hu_to_mu,
                                renderer=first.renderer, dtype=volume.mu.dtype, **render_options)
            model = sim.model.to(volume.mu.device)
            used = sim.convention
            if convention == "detect":  # as the registration would: from the image and the DRR at its start
                with torch.no_grad():
                    start_drr = render(model, detector, starts[0], first.renderer, **render_options)[0]
                xray, used = _detected(sim.image, start_drr)
                xray = xray.to(device=volume.mu.device, dtype=volume.mu.dtype)
            else:
                xray = as_line_integral(sim.image, sim.convention).to(volume.mu.device)
            field = None if sim.collimation_mask is None else sim.collimation_mask.to(
                device=volume.mu.device, dtype=xray.dtype)
            with torch.no_grad():
                at_truth = render(model, detector, pose, first.renderer, **render_options)[0]
            facts[name] = {"convention": sim.convention, "converted_as": used,
                           "instrument_coverage": sim.instrument_coverage,
                           "ncc_at_truth": image_metrics(at_truth, xray, field)["ncc"],
                           "model_slices": tuple(model.mu.shape)}
            panels.append(panel_row([grey(sim.image.cpu()), grey(xray.cpu()), grey(at_truth.cpu())],
                                    [name, "registered", "model"]))
            for variant, opt in opts.items():
                t_variant = time.perf_counter()
                model_v = matched_model(model, sim.degradation) if matched[variant] else model
                for i in range(n):
                    rows.append(_register_one(model_v, xray, field, detector, starts[i], opt, pose, points,
                                              center, (name, variant, i, start_mtre[i])))
                if log is not None:
                    done = [r for r in rows if r["preset"] == name and r["variant"] == variant]
                    rate = np.mean([r["final_mtre_mm"] < success_mm for r in done])
                    log(f"{name} / {variant}: success (mTRE < {success_mm:g} mm) {rate:.0%}, median mTRE "
                        f"{np.median([r['final_mtre_mm'] for r in done]):.2f} mm, "
                        f"{time.perf_counter() - t_variant:.1f} s")
    seconds = time.perf_counter() - t_all
    summary = {p: {v: _summary([r for r in rows if r["preset"] == p and r["variant"] == v], success_mm)
                   for v in opts} for p in preset_names}

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out / "realism.csv", out / "realism.md", out / "realism.png"
    write_csv(csv_path, REALISM_COLUMNS, _cells(rows))
    md_path.write_text("\n".join(_markdown(preset_names, opts, table, facts, summary, detector, n, max_rot,
                                           max_trans, seed, success_mm, convention, ct_name, seconds,
                                           float(np.median(start_mtre)))) + "\n")
    save_png(png_path, stack_panels(panels))
    return {"csv": csv_path, "markdown": md_path, "png": png_path, "summary": summary, "presets": facts,
            "seconds": seconds}


def matched_model(model: Volume, degradation) -> Volume:
    """The model a user who knows the tube would register with: polychromatic at the X-ray's kVp and
    filtration (`MaterialVolume` of the model's HU) when the X-ray is polychromatic, else ``model``."""
    if degradation.kvp is None:
        return model
    from ..physics.beam import Beam
    from ..physics.materials import MaterialVolume
    from ..physics.spectra import tube_spectrum

    beam = Beam(tube_spectrum(degradation.kvp, degradation.filtration_mm_al))
    return MaterialVolume.from_volume(model.to("cpu"), beam).to(model.mu.device)


def _register_one(model, xray, field, detector, start, opt, pose, points, center, key) -> dict:
    """One registration from ``start``: its errors, similarity, image agreement and time, as a CSV row dict."""
    name, variant, i, start_mtre = key
    t0 = time.perf_counter()
    result = register(model, xray, detector, start, opt, mask=field)
    per = time.perf_counter() - t0
    final = result.pose.to(torch.float64).cpu()
    with torch.no_grad():
        drr = render(model, detector, final.to(model.mu.device), opt.renderer, **opt.render_options())[0]
    metrics = image_metrics(drr, xray, field)
    return {"preset": name, "variant": variant, "start": i, "start_mtre_mm": start_mtre,
            "final_mtre_mm": float(evaluation.mtre(final, pose, points)),
            "rotation_error_deg": float(evaluation.rotation_error_deg(final, pose)),
            "translation_error_mm": float(evaluation.translation_error_mm(final, pose, center)),
            "final_similarity": float(result.similarity), "ncc": metrics["ncc"], "ssim": metrics["ssim"],
            "css": metrics["css"], "converged": bool(result.converged), "seconds": per}


def _summary(rows: list[dict], success_mm: float) -> dict:
    final = np.array([r["final_mtre_mm"] for r in rows], dtype=np.float64)
    ok = np.isfinite(final)
    return {
        "n": len(rows),
        "success_rate": float(np.mean(ok & (final < success_mm))),
        "median_final_mtre_mm": float(np.median(final[ok])) if ok.any() else None,
        "median_ncc": float(statistics.median(r["ncc"] for r in rows)),
        "median_ssim": float(statistics.median(r["ssim"] for r in rows)),
        "median_css": float(statistics.median(r["css"] for r in rows)),
        "median_seconds": float(statistics.median(r["seconds"] for r in rows)),
    }


def _markdown(preset_names, opts, table, facts, summary, detector, n, max_rot, max_trans, seed, success_mm,
              convention, ct_name, seconds, start_median) -> list[str]:
    first = next(iter(opts.values()))
    lines = [
        "# Registration against realistic X-rays",
        "",
        f"- CT: {ct_name}; detector {detector.rows}x{detector.cols}, pixel "
        f"{float(detector.pixel_spacing[0]):g}x{float(detector.pixel_spacing[1]):g} mm, SDD {float(detector.sdd):g} mm",
        f"- X-rays: `DiffRegLogic.physics.xray_simulation` presets (docs/realism.md), seed {int(seed)}; the stored "
        f"image turned into a line integral from its {'known' if convention == 'known' else 'detected'} convention",
        f"- starts: {n} random rigid motions about the CT centre, rotation-vector components uniform in "
        f"+-{max_rot:g} deg, translations in +-{max_trans:g} mm (seed {int(seed)}; median start mTRE "
        f"{start_median:.2f} mm), the same for every preset and variant",
        f"- registration: one start at a time, {first.optimizer}, renderer {first.renderer}, levels "
        f"{', '.join(f'{f:g}' for f in first.levels)}, at most {first.max_iterations} iterations per level; "
        f"success = final mTRE < {success_mm:g} mm over {N_TARGET_POINTS} points of the full CT; "
        f"NCC/SSIM/CSS: the model's DRR at the registered pose against the X-ray as registered; total "
        f"{seconds:.1f} s",
        "- variants: " + "; ".join(f"{name} = {table[name] or 'defaults'} (similarity {o.similarity})"
                                   for name, o in opts.items()),
        "",
        "## Presets",
        "",
    ]
    lines += markdown_table(["preset", "stored convention", "converted as", "instrument coverage",
                             "model CT (K, J, I)", "NCC of the model DRR at truth"],
                            [[p, facts[p]["convention"], facts[p]["converted_as"],
                              f"{100 * facts[p]['instrument_coverage']:.1f}%",
                              "x".join(str(s) for s in facts[p]["model_slices"]), fmt(facts[p]["ncc_at_truth"], 4)]
                             for p in preset_names])
    lines += ["", "## Results", ""]
    header = ["preset", "variant", "n", f"success < {success_mm:g} mm", "median mTRE (mm)", "median NCC",
              "median SSIM", "median CSS", "median s / registration"]
    body = []
    for p in preset_names:
        for v in opts:
            s = summary[p][v]
            body.append([p, v, s["n"], f"{100 * s['success_rate']:.0f}%", fmt(s["median_final_mtre_mm"], 2),
                         fmt(s["median_ncc"], 4), fmt(s["median_ssim"], 4), fmt(s["median_css"], 4),
                         fmt(s["median_seconds"], 2)])
    return lines + markdown_table(header, body)


_DIGITS = {"start_mtre_mm": 4, "final_mtre_mm": 4, "rotation_error_deg": 4, "translation_error_mm": 4,
           "final_similarity": 6, "ncc": 6, "ssim": 6, "css": 6, "seconds": 4}


def _cells(rows: list[dict]) -> list[list]:
    """CSV cells (`REALISM_COLUMNS`) of the finished rows."""
    return [[round_cell(r[c], _DIGITS[c]) if c in _DIGITS else r[c] for c in REALISM_COLUMNS] for r in rows]
