"""A realistic simulated X-ray registered with a monochromatic and a polychromatic DRR model (the seed poster's claim).

Writes ``polychromatic.csv``, ``polychromatic.md`` and ``polychromatic.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import evaluation
from ..drr.radiograph import simulate_radiograph
from ..drr.rendering import render
from ..errors import InputError
from ..figures.composites import grey, panel_row
from ..geometry.detector import Detector
from ..geometry.motions import perturb_pose, random_motions
from ..physics.beam import Beam
from ..physics.materials import MaterialVolume
from ..physics.realism import Realism
from ..physics.spectra import tube_spectrum
from ..registration.engine import register_batch
from ..registration.options import make_options
from ..similarity.metrics import image_metrics
from ..volume.ct import Volume
from .common import N_TARGET_POINTS, _count, _nonnegative, _true_pose, keep_rows_on_interrupt
from .reports import fmt, markdown_table, round_cell, save_png, write_csv

Log = Callable[[str], None]

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
    thresholds=None,
) -> dict:
    """Register a realistic simulated X-ray with a monochromatic and a polychromatic DRR model (the poster's claim).

    The X-ray is `drr.radiograph.simulate_radiograph` of the CT's materials
    (`physics.materials.MaterialVolume.from_volume(volume, beam, hu_to_mu, thresholds=thresholds)`, the
    HU thresholds of air, soft tissue and bone a `MaterialThresholds`, default its defaults) at
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
    if not isinstance(volume, Volume) or isinstance(volume, MaterialVolume):
        raise InputError("polychromatic() takes the monochromatic Volume of the CT; it builds the materials itself")
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    beam = beam or Beam(tube_spectrum(80))
    realism = realism or Realism(photons_per_pixel=2e4, blur_mm=0.5, seed=int(seed))
    n, batch = _count(n, "n"), _count(batch, "batch")
    max_rot = _nonnegative(max_rotation_deg, "max_rotation_deg")
    max_trans = _nonnegative(max_translation_mm, "max_translation_mm")
    materials = MaterialVolume.from_volume(volume, beam, hu_to_mu, thresholds=thresholds)
    pose = _true_pose(true_pose)
    renderer = (options or {}).get("renderer", "siddon")
    with torch.no_grad():
        xray = simulate_radiograph(materials, detector, pose, realism, renderer)[0]
    models = {"monochromatic": volume, "polychromatic": materials}
    opts = make_options(**(options or {}))
    out = Path(out_dir)  # made only when the results are written (a failed run leaves no empty folder)

    center = volume.center.to(torch.float64).cpu()
    starts = perturb_pose(pose, random_motions(n, max_rot, max_trans, int(seed)), center)
    points = evaluation.target_points(volume, N_TARGET_POINTS).to(torch.float64).cpu()
    start_mtre = evaluation.mtre(starts, pose, points).tolist()
    t_all = time.perf_counter()
    rows, summary, at_truth = [], {}, {}
    model_rows: list[dict] = []
    keep = out / "polychromatic.partial.csv"
    with keep_rows_on_interrupt(keep, POLY_COLUMNS, lambda: _poly_cells(rows + model_rows)):
        for name, model in models.items():
            with torch.no_grad():
                at_truth[name] = render(model, detector, pose, opts.renderer, **opts.render_options())[0]
            truth_metrics = image_metrics(at_truth[name], xray)
            finals, model_rows = [], []
            t_model = time.perf_counter()
            for i in range(0, n, batch):
                t0 = time.perf_counter()
                results = register_batch(model, xray, detector, starts[i:i + batch], opts, reference_pose=pose)
                per = (time.perf_counter() - t0) / len(results)
                final = torch.stack([r.pose for r in results]).to(torch.float64)
                with torch.no_grad():
                    drrs = render(model, detector, final, opts.renderer, **opts.render_options())
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
            model_rows = []  # the interrupt handler keeps rows + model_rows
            if log is not None:
                s = summary[name]
                log(f"{name}: NCC at truth {s['ncc_at_truth']:.4f}, success {s['success_rate']:.0%}, median mTRE "
                    f"{s['median_final_mtre_mm']:.2f} mm, {time.perf_counter() - t_model:.1f} s")
    seconds = time.perf_counter() - t_all

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out / "polychromatic.csv", out / "polychromatic.md", out / "polychromatic.png"
    write_csv(csv_path, POLY_COLUMNS, _poly_cells(rows))
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
        f"seed {int(seed)}; median start mTRE {fmt(np.median(start_mtre), 2)} mm), the same for both models; "
        f"{opts.optimizer}, {opts.similarity}, renderer {opts.renderer}, levels "
        f"{', '.join(f'{f:g}' for f in opts.levels)}; success = final mTRE < {success_mm:g} mm; total {seconds:.1f} s",
        "",
    ]
    header = ["model", "NCC at true pose", "SSIM at true pose", f"success < {success_mm:g} mm",
              "median final mTRE (mm)", "median NCC registered", "median SSIM registered", "median s / registration"]
    lines += markdown_table(header, [[name, fmt(s["ncc_at_truth"], 4), fmt(s["ssim_at_truth"], 4),
                                       f"{100 * s['success_rate']:.0f}%", fmt(s["median_final_mtre_mm"], 2),
                                       fmt(s["median_ncc"], 4), fmt(s["median_ssim"], 4),
                                       fmt(s["median_seconds"], 2)] for name, s in summary.items()])
    md_path.write_text("\n".join(lines) + "\n")
    save_png(png_path, panel_row([grey(xray), grey(at_truth["monochromatic"]), grey(at_truth["polychromatic"])],
                                 ["simulated X-ray", "monochromatic DRR", "polychromatic DRR"]))
    return {"csv": csv_path, "markdown": md_path, "png": png_path, "summary": summary, "seconds": seconds}


def _poly_cells(rows: list[dict]) -> list[list]:
    """CSV cells (`POLY_COLUMNS`) of finished rows."""
    return [[round_cell(r[c], 5) if isinstance(r[c], float) else r[c] for c in POLY_COLUMNS] for r in rows]
