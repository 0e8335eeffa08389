"""What the commands share once they run: loading the CT, the polychromatic model, progress lines, reports.

Imported by a command's ``run`` (never by the parser), so it may import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..volume.ct import Volume
from ..volume.hu import HUToMu
from .options import PHANTOM, POLYCHROMATIC

# `diffreg experiment polychromatic` simulates its X-ray with this noise and PSF unless told otherwise
DEFAULT_EXPERIMENT_PHOTONS = 2e4
DEFAULT_EXPERIMENT_BLUR_MM = 0.5


def device_of(args) -> torch.device:
    """The torch device of ``--device``, after capping the CPU threads at ``--threads`` (or $DIFFREG_THREADS)."""
    from ..devices import resolve_device, set_threads

    set_threads(getattr(args, "threads", None))
    return resolve_device(args.device)


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def load_ct(path: str, hu_to_mu: HUToMu, dtype: torch.dtype, labels: str | None = None) -> Volume:
    """A CT file/DICOM folder, or the built-in phantom when ``path == "phantom"``."""
    if path == PHANTOM:
        if labels is not None:
            raise InputError("--labels needs a CT file; the built-in phantom has no label map")
        from ..volume.phantoms import chest_phantom

        return chest_phantom(hu_to_mu=hu_to_mu, dtype=dtype)
    from ..volume.io import read_volume

    return read_volume(path, hu_to_mu, labels, dtype)


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def hu_conversion(args) -> HUToMu:
    if not hasattr(args, "mu_water"):  # commands without HU options (demo) use the default conversion
        return HUToMu()
    return HUToMu(mu_water=args.mu_water, bone_hu=args.bone_hu, mu_bone=args.mu_bone)


def realism_of(args, blur_mm: float = 0.0):
    """`Realism` from the realism flags; ``blur_mm`` is the PSF when ``--blur-mm`` is not given."""
    from ..physics.realism import Realism

    return Realism(photons_per_pixel=args.noise_photons, blur_mm=blur_mm if args.blur_mm is None else args.blur_mm,
                   scatter_fraction=args.scatter_fraction, scatter_sigma_mm=args.scatter_sigma_mm, heel=args.heel,
                   seed=args.noise_seed)


def beam_of(args):
    from ..physics.beam import Beam
    from ..physics.spectra import tube_spectrum

    spectrum = tube_spectrum(args.kvp, args.filtration_mm_al, n_bins=args.energy_bins)
    return Beam(spectrum, args.detector_response, args.signal)


def thresholds_of(args):
    """`MaterialThresholds` (air / soft tissue / bone, HU) from the physics flags."""
    from ..physics.calibration import MaterialThresholds

    return MaterialThresholds(args.air_max_hu, args.bone_min_hu, args.soft_width_hu)


def parse_implants(specs: Sequence[str]) -> dict[int, str]:
    implants = {}
    for spec in specs:
        label, sep, material = spec.partition("=")
        if not sep or not label.strip().lstrip("-").isdigit() or not material.strip():
            raise InputError(f"--implant takes LABEL=MATERIAL (e.g. 1=titanium), got {spec!r}")
        implants[int(label)] = material.strip()
    return implants


def model(args, volume: Volume) -> tuple[Volume, str]:
    """(volume to render, ray tracer): the CT itself, or its materials for ``--renderer polychromatic``."""
    if args.renderer != POLYCHROMATIC:
        return volume, args.renderer
    from ..physics.materials import MaterialVolume

    implants = parse_implants(args.implant)
    if implants and volume.labels is None:
        raise InputError("--implant needs a label map on the CT grid: give --labels (diffreg render takes one)")
    model = MaterialVolume.from_volume(volume.to("cpu"), beam_of(args), hu_conversion(args),
                                       thresholds=thresholds_of(args), implants=implants or None)
    return model.to(volume.mu.device), args.tracer


def progress_printer(quiet: bool):
    """A registration callback printing one line per level (the last iteration's best similarity)."""
    state = {"level": None}

    def callback(progress) -> None:
        if quiet:
            return
        if progress.level != state["level"]:
            state["level"] = progress.level
            print(f"  level {progress.level + 1}/{progress.n_levels}: similarity {progress.similarity:.4f} "
                  f"({progress.elapsed:.1f} s)", flush=True)

    return callback


def loss_curve(result) -> np.ndarray:
    """Best similarity per iteration, one series per level; for similarities bounded by 1, 1 - similarity on a log axis.

    A log axis needs a positive value: when every 1 - similarity is 0 (a start
    already at the optimum) the axis is linear instead, so the picture never
    fails after the registration has run.
    """
    from ..figures.plots import line_plot

    name = result.options.get("similarity", "similarity")
    bounded = name != "mi"
    levels = sorted({e["level"] for e in result.trace})
    raw, offset = {}, 0
    for level in levels:
        entries = [e for e in result.trace if e["level"] == level]
        values = [(1.0 - e["best_similarity"]) if bounded else e["best_similarity"] for e in entries]
        raw[f"level {level + 1}"] = ([offset + e["iteration"] for e in entries], values)
        offset += len(entries)
    log_y = bounded and any(v > 0 for _, values in raw.values() for v in values)
    series = {k: (x, [v if v > 0 else float("nan") for v in values]) if log_y else (x, values)
              for k, (x, values) in raw.items()}
    if not series:  # no iteration at all: one point at the final similarity
        final = (1.0 - result.similarity) if bounded else result.similarity
        series = {"final": ([0], [final])}
    return line_plot(series, title="registration: best similarity so far", xlabel="iteration",
                     ylabel=f"1 - {name}" if bounded else name, log_y=log_y)


def pose_reports(estimates: Sequence[torch.Tensor], truth: torch.Tensor, volume: Volume,
                 detector: Detector) -> list[dict]:
    """Per estimate: mTRE, mPD, mRPD over the CT's 2000 target points (found once) and the pose errors, mm and deg."""
    from .. import evaluation

    points = evaluation.target_points(volume.to("cpu"), 2000)  # half a second on a 512 x 512 x 133 CT
    center = volume.center.to(torch.float64).cpu()
    return [{
        "mtre_mm": float(evaluation.mtre(estimate, truth, points)),
        "mpd_mm": float(evaluation.mpd(estimate, truth, points, detector)),
        "mrpd_mm": float(evaluation.mrpd(estimate, truth, points, detector)),
        "rotation_error_deg": float(evaluation.rotation_error_deg(estimate, truth)),
        "translation_error_mm": float(evaluation.translation_error_mm(estimate, truth, center)),
    } for estimate in estimates]


def network_report(model, network, hypotheses, truth, volume, detector) -> dict:
    """The result's ``network``: the model, its pose (hypothesis 0), the hypotheses, the time, errors vs the truth."""
    entry = {"model": str(model), "camera_from_world": hypotheses[0].tolist(),
             "hypotheses": [h.tolist() for h in hypotheses], "seconds": round(network.last_seconds, 4),
             "trained_on": {"image_size": int(network.info.image_size),
                            "validation": getattr(network.info, "validation", None)}}
    if truth is not None:
        entry["error"] = pose_reports([hypotheses[0]], truth, volume, detector)[0]
    return entry


def load_kernels(volume, detector, pose, options) -> None:
    """Render 2 x 2 pixels once with and without gradients, so compiled kernels are loaded before the clock starts."""
    import torch

    from ..drr.rendering import render

    tiny = detector.downsample(max(detector.shape) / 2.0)
    p = pose.to(torch.float64).clone().requires_grad_(True)
    drr = render(volume, tiny, p, options.renderer, **options.render_options())
    drr.sum().backward()
    with torch.no_grad():  # the forward-only kernel (final scores, reported images) is a kernel of its own
        render(volume, tiny, p.detach(), options.renderer, **options.render_options())
