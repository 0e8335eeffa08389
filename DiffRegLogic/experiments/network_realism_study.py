"""The trained pose network on realistic X-rays: the network alone, then each registration variant from its poses.

The ablation (`ablation_study`) tests the network on clean DRRs. Here a
model file of ``diffreg train`` meets X-rays simulated with the realism
presets (`DiffRegLogic.physics.xray_simulation.PRESETS`: scatter, noise,
blur, heel, instruments, truncation, processing, raw / inverted, collimation,
a polychromatic beam, all together), as an intra-operative X-ray would be.

Test cases: ``n`` true poses sampled uniformly in the model's training range
(or ``pose_range``) about its reference view, with the ablation's test seed
(``seed + TEST_SEED_OFFSET``: in the model's own range these are the poses the
ablation tests with the same seed and range). Per
preset and case: ``simulate_xray(hu, affine, detector, pose, preset(name,
seed + case))`` (each case its own noise and instruments); the stored image
becomes a line integral from its known convention (``convention="known"``)
or the way ``diffreg register --model`` does it (``"detect"``:
`DiffRegLogic.learning.inference.network_start` detects it at the reference
view and again at the prediction). The network gives its K hypotheses; each
variant (`REALISM_VARIANTS` or a name -> `make_options` settings) registers
the model CT (cropped under truncation; polychromatic at the X-ray's tube
for ``"model": "matched"`` variants) from them, within the simulation's
collimated field.

Writes ``network_realism.csv`` (one row per preset, case and variant),
``network_realism.md`` (a summary row per preset and variant) and
``network_realism.png`` (per preset, case 0: the stored image, what the
network and the registration got, the model's DRR at the truth).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .. import evaluation
from ..drr.rendering import render
from ..errors import InputError
from ..figures.composites import grey, panel_row
from ..geometry.detector import Detector
from ..physics.xray_simulation import PRESETS, preset, simulate_xray
from ..volume.ct import Volume
from ..volume.hu import HUToMu, hu_from_mu
from .common import N_TARGET_POINTS, TEST_SEED_OFFSET, _count, _names, keep_rows_on_interrupt
from .reports import fmt, markdown_table, round_cell, save_png, stack_panels, write_csv

Log = Callable[[str], None]

NETWORK_REALISM_COLUMNS = ("preset", "case", "variant", "network_mtre_mm", "network_success", "final_mtre_mm",
                           "rotation_error_deg", "translation_error_mm", "success", "convention", "network_seconds",
                           "seconds")
"""Columns of ``network_realism.csv``; network_*: hypothesis 0 of the network; final_*: after the variant's
registration; success: final mTRE below the refined threshold; seconds: the registration's wall time."""


def held_out_poses(network, n: int, seed: int, pose_range=None) -> torch.Tensor:
    """(n, 4, 4) float64: true poses uniform in ``pose_range`` (default: the model's) about its reference view."""
    from ..learning.poses import poses_from_motions, sample_motions

    pose_range = network.info.pose_range if pose_range is None else pose_range
    generator = torch.Generator().manual_seed(int(seed) + TEST_SEED_OFFSET)
    return poses_from_motions(network.reference_pose, sample_motions(n, pose_range, generator), network.center)


def network_realism(
    volume: Volume,
    detector: Detector,
    network,
    out_dir,
    *,
    presets: Sequence[str] = tuple(PRESETS),
    variants: Sequence[str] | Mapping[str, dict] = ("zncc",),
    n: int = 20,
    seed: int = 0,
    pose_range=None,
    options: dict | None = None,
    convention: str = "known",
    network_success_mm: float = 10.0,
    refined_success_mm: float = 2.0,
    hu_to_mu: HUToMu | None = None,
    ct_name: str = "built-in chest phantom",
    log: Log | None = print,
) -> dict:
    """Test ``network`` (a `PoseNetworkInitializer` for this CT and detector) on ``n`` simulated X-rays per preset.

    ``volume``: the monochromatic CT the model was trained on (its HU are
    recovered with ``hu_to_mu``). ``options``: `make_options` settings every
    variant starts from (default: the registration's defaults). Returns
    {"csv", "markdown", "png" (paths), "summary" {preset: {variant: {n,
    network_median_mtre_mm, network_success_rate, success_rate,
    median_final_mtre_mm, max_final_mtre_mm, median_seconds}}}, "seconds"}.
    """
    from ..learning.inference import network_start
    from ..registration.engine import register
    from ..registration.initializers import FixedPose
    from ..registration.options import make_options
    from ..xray.image import XRay
    from .realism_study import CONVENTION_MODES, as_line_integral, matched_model, variant_table

    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a DiffRegLogic Volume, got {type(volume).__name__}")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    preset_names = _names(presets, "presets")
    for name in preset_names:
        preset(name)  # InputError naming the known presets
    if convention not in CONVENTION_MODES:
        raise InputError(f"unknown convention mode {convention!r}; choose one of {', '.join(CONVENTION_MODES)}")
    table = variant_table(variants)
    n = _count(n, "n")
    opts = {name: make_options(**{**dict(options or {}), **{k: v for k, v in s.items() if k != "model"}})
            for name, s in table.items()}
    first = next(iter(opts.values()))
    render_options = first.render_options()
    hu = hu_from_mu(volume.mu.detach().to(torch.float64).cpu(), hu_to_mu)
    center = volume.center.to(torch.float64).cpu()
    points = evaluation.target_points(volume.to("cpu"), N_TARGET_POINTS, seed=seed).to(torch.float64)
    truths = held_out_poses(network, n, seed, pose_range)
    out = Path(out_dir)  # made only when the results are written

    t_all = time.perf_counter()
    rows: list[dict] = []
    panels = []
    with keep_rows_on_interrupt(out / "network_realism.partial.csv", NETWORK_REALISM_COLUMNS,
                                lambda: _cells(rows)):
        for name in preset_names:
            t_preset = time.perf_counter()
            matched = None  # the beam-matched model of "model": "matched" variants, built once per preset
            for k in range(n):
                truth = truths[k]
                sim = simulate_xray(hu, volume.affine.cpu(), detector, truth, preset(name, int(seed) + k),
                                    hu_to_mu=hu_to_mu, renderer=first.renderer, dtype=volume.mu.dtype,
                                    **render_options)
                model = sim.model.to(volume.mu.device)
                t0 = time.perf_counter()
                if convention == "detect":  # as diffreg register --model: nothing states the convention
                    shutter = None if sim.collimation_mask is None else sim.collimation_mask.cpu() > 0.5
                    stated = XRay(image=sim.image.to(torch.float64).cpu(), mask=shutter,  # as a DICOM's shutter
                                  meta={"intensity_source": "default"})
                    resolved, poses = network_start(network, stated, detector, model, first.renderer,
                                                    **render_options)
                    xray, used = resolved.image, resolved.meta.get("intensity_detected", "line_integral")
                else:
                    xray, used = as_line_integral(sim.image, sim.convention), sim.convention
                    poses = network(xray, detector, model)
                network_seconds = time.perf_counter() - t0
                xray = xray.to(device=volume.mu.device, dtype=volume.mu.dtype)
                field = None if sim.collimation_mask is None else sim.collimation_mask.to(
                    device=volume.mu.device, dtype=xray.dtype)
                network_mtre = float(evaluation.mtre(poses[0].to(torch.float64), truth, points))
                if k == 0:
                    with torch.no_grad():
                        at_truth = render(model, detector, truth.to(model.mu.device), first.renderer,
                                          **render_options)[0]
                    panels.append(panel_row([grey(sim.image.cpu()), grey(xray.cpu()), grey(at_truth.cpu())],
                                            [name, "network / registration input", "model at truth"]))
                for variant, opt in opts.items():
                    model_v = model
                    if table[variant].get("model") == "matched":
                        if matched is None:  # the preset's model is the same CT (cropped alike) at every case
                            matched = matched_model(model, sim.degradation)
                        model_v = matched
                    t1 = time.perf_counter()
                    result = register(model_v, xray, detector, FixedPose(poses.to(model.mu.device)), opt,
                                      mask=field)
                    final = result.pose.to(torch.float64).cpu()
                    final_mtre = float(evaluation.mtre(final, truth, points))
                    rows.append({"preset": name, "case": k, "variant": variant, "network_mtre_mm": network_mtre,
                                 "network_success": network_mtre < network_success_mm, "final_mtre_mm": final_mtre,
                                 "rotation_error_deg": float(evaluation.rotation_error_deg(final, truth)),
                                 "translation_error_mm": float(evaluation.translation_error_mm(final, truth, center)),
                                 "success": final_mtre < refined_success_mm, "convention": used,
                                 "network_seconds": network_seconds, "seconds": time.perf_counter() - t1})
            if log is not None:
                for variant in opts:
                    s = _summary([r for r in rows if r["preset"] == name and r["variant"] == variant])
                    log(f"{name} / {variant}: network median {s['network_median_mtre_mm']:.1f} mm, refined "
                        f"SR@{refined_success_mm:g} mm {s['success_rate']:.0%} (median "
                        f"{s['median_final_mtre_mm']:.2f} mm), {time.perf_counter() - t_preset:.0f} s")
    seconds = time.perf_counter() - t_all
    summary = {p: {v: _summary([r for r in rows if r["preset"] == p and r["variant"] == v]) for v in opts}
               for p in preset_names}
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "network_realism.csv", "markdown": out / "network_realism.md",
             "png": out / "network_realism.png"}
    write_csv(paths["csv"], NETWORK_REALISM_COLUMNS, _cells(rows))
    facts = dict(n=n, seed=seed, convention=convention, network_success_mm=network_success_mm,
                 refined_success_mm=refined_success_mm, pose_range=pose_range or network.info.pose_range,
                 own_range=pose_range is None,
                 options=options, hypotheses=network.hypotheses, seconds=seconds)
    paths["markdown"].write_text("\n".join(_markdown(summary, table, facts, ct_name)) + "\n", encoding="utf-8")
    save_png(paths["png"], stack_panels(panels))
    return {**paths, "summary": summary, "seconds": seconds}


def _cells(rows: list[dict]) -> list[list]:
    """CSV cells: numbers rounded to 4 decimals (mm, deg, s), the rest as they are."""
    return [[round_cell(r[c], 4) if isinstance(r[c], float) else r[c] for c in NETWORK_REALISM_COLUMNS] for r in rows]


def _summary(rows: list[dict]) -> dict:
    network = [r["network_mtre_mm"] for r in rows]
    final = [r["final_mtre_mm"] for r in rows]
    return {"n": len(rows), "network_median_mtre_mm": statistics.median(network),
            "network_success_rate": sum(r["network_success"] for r in rows) / len(rows),
            "success_rate": sum(r["success"] for r in rows) / len(rows),
            "median_final_mtre_mm": statistics.median(final), "max_final_mtre_mm": max(final),
            "median_seconds": statistics.median(r["seconds"] + r["network_seconds"] for r in rows)}


def _markdown(summary: dict, table: dict, facts: dict, ct_name: str) -> list[str]:
    pose_range = facts["pose_range"]
    same = "; the poses the ablation tests with this seed and the model's range" if facts["own_range"] else ""
    header = ["preset", "network: median mTRE (mm)", f"network SR (< {facts['network_success_mm']:g} mm)", "variant",
              f"refined SR (< {facts['refined_success_mm']:g} mm)", "refined median (mm)", "refined worst (mm)",
              "s / case (network + registration)"]
    body = [[p, fmt(s["network_median_mtre_mm"], 2), f"{s['network_success_rate']:.0%}", v,
             f"{s['success_rate']:.0%}", fmt(s["median_final_mtre_mm"], 2), fmt(s["max_final_mtre_mm"], 2),
             fmt(s["median_seconds"], 2)]
            for p, by_variant in summary.items() for v, s in by_variant.items()]
    variants = "; ".join(f"{name}: {settings or 'the defaults'}" for name, settings in table.items())
    return [f"# The pose network on realistic X-rays ({ct_name})", "",
            f"{facts['n']} test poses per preset, uniform in ±{pose_range.rotation_deg[0]:g}° / "
            f"±{pose_range.translation_mm[0]:g} mm about the model's reference view (seed {facts['seed']}"
            f"{same}); each case simulated with the preset (its own "
            f"noise and instruments), converted to a line integral ({facts['convention']} convention), predicted "
            f"by the network ({facts['hypotheses']} hypotheses) and registered from them by each variant "
            f"({variants}; base options: {facts['options'] or 'the registration defaults'}).", "",
            *markdown_table(header, body), "", f"Total {facts['seconds']:.0f} s."]
