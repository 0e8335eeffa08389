"""The poster's ablation (its Table 3) on held-out DRRs: which part of the pose network buys what.

Rows (`ABLATION_ROWS`): A the backbone alone; B the structure decoder (the
regularised autoencoder); C self-attention with the 2D positional embedding;
``*`` incremental learning (the training pool grows in stages while the pose
range widens from half to full); D the registration refining the network's
poses (``+D+S``: after a wide search about them). Every trained row gets the same training settings and budget (a
`TrainConfig`, its switches changed); ``+D`` rows reuse the model of the row
they extend.

Test set: ``n`` poses sampled uniformly in the training range about the
reference view with their own seed (disjoint from training and validation),
rendered on the full detector (clean DRRs unless ``test_augmentation`` says
otherwise), each predicted by `DiffRegLogic.learning.inference.PoseNetworkInitializer`
exactly as ``diffreg register --model`` does. Columns: mTRE and mPD (mm,
over `evaluation.target_points(volume, 1000)`), the per-axis errors of the
CT motion about its centre that takes the true pose to the estimate (Rx, Ry,
Rz: components of its rotation vector, deg; Tx, Ty, Tz: its translation, world
mm), each mean +- std, and the success
rate SR: mTRE below ``network_success_mm`` (10 mm) for the network alone,
below ``refined_success_mm`` (2 mm) after refinement.

Writes ``ablation.csv`` (one row per ablation row), ``ablation_cases.csv``
(one row per row and test case), ``ablation.md`` and ``ablation.png`` (the
sorted mTRE of the test cases, per row); an interrupt keeps the finished cases in
``ablation.partial.csv``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import evaluation
from ..drr.rendering import render
from ..errors import InputError
from ..geometry.detector import Detector
from ..geometry.rigid import so3_log
from ..volume.ct import Volume
from . import ABLATION_ROWS
from .common import N_TARGET_POINTS, TEST_SEED_OFFSET, keep_rows_on_interrupt
from .reports import fmt, markdown_table, write_csv

AXES = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")
CASE_COLUMNS = ("row", "case", "mtre_mm", "mpd_mm", *AXES, "success", "seconds")
SUMMARY_COLUMNS = ("row", "n", "mtre_mm_mean", "mtre_mm_std", "mtre_mm_median", "mpd_mm_mean", "mpd_mm_std",
                   *(f"{a}_{s}" for a in AXES for s in ("mean", "std")), "success_threshold_mm", "success_rate",
                   "train_seconds", "train_steps", "seconds_per_case")
Log = Callable[[str], None]


SEARCH_ABOUT_NETWORK = (15.0, 30.0)
"""``+D+S`` rows: the wide search's range (deg, mm per axis) about the network's pose before the refinement."""


def _trained_row(name: str) -> str:
    return name.split("+D")[0]


def case_errors(estimate: torch.Tensor, truth: torch.Tensor, points: torch.Tensor, detector: Detector,
                center: torch.Tensor) -> dict:
    """mTRE, mPD (mm) and the per-axis motion errors (deg, mm) of one estimate (4, 4) against the truth (4, 4)."""
    from ..geometry.motions import motion_about_center_params
    from ..geometry.rigid import invert_rigid

    estimate, truth = estimate.to(torch.float64), truth.to(torch.float64)
    r_est, t_est = motion_about_center_params(invert_rigid(truth) @ estimate, center)
    rotation = torch.rad2deg(so3_log(r_est)).abs()  # the motion truth -> estimate about the centre
    # the translation error of the CT centre, world axes: estimate and truth move it by their own t
    translation = t_est.abs()
    return {"mtre_mm": float(evaluation.mtre(estimate, truth, points)),
            "mpd_mm": float(evaluation.mpd(estimate, truth, points, detector)),
            **{a: float(v) for a, v in zip(AXES, [*rotation.tolist(), *translation.tolist()])}}


def test_cases(volume: Volume, detector: Detector, reference_pose: torch.Tensor, pose_range, n: int, seed: int,
               renderer: str = "siddon", augmentation=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, H, W) on the full detector, true poses (n, 4, 4) float64): the held-out test X-rays."""
    from ..learning.poses import poses_from_motions, sample_motions

    generator = torch.Generator().manual_seed(int(seed))
    center = volume.center.to(torch.float64).cpu()
    poses = poses_from_motions(reference_pose.to(torch.float64), sample_motions(n, pose_range, generator), center)
    images = []
    with torch.no_grad():
        for chunk in poses.split(8):
            images.append(render(volume, detector, chunk.to(volume.mu.device, volume.mu.dtype), renderer).cpu())
    images = torch.cat(images)
    if augmentation is not None:
        from ..learning.augment import augment

        images = augment(images.to(torch.float32), augmentation, generator).to(images.dtype)
    return images, poses


def ablation(
    volume: Volume,
    detector: Detector,
    reference_pose,
    out_dir,
    train_config,
    *,
    rows: Sequence[str] = tuple(ABLATION_ROWS),
    n: int = 20,
    seed: int = 0,
    refine_options: dict | None = None,
    hypotheses: int = 4,
    network_success_mm: float = 10.0,
    refined_success_mm: float = 2.0,
    test_augmentation=None,
    ct_name: str = "built-in chest phantom",
    log: Log | None = print,
) -> dict:
    """Train each row's network with ``train_config`` (switches changed), test it on ``n`` held-out X-rays, write tables.

    ``refine_options``: `make_options` settings of the ``+D`` refinement
    (default: the registration's defaults; ``+D+S`` adds the wide search). Returns the paths written and the
    summary rows.
    """
    from ..learning.inference import PoseNetworkInitializer
    from ..learning.trainer import train
    from ..registration.engine import register
    from ..registration.initializers import FixedPose
    from ..registration.options import make_options

    unknown = [r for r in rows if r not in ABLATION_ROWS]
    if unknown:
        raise InputError(f"unknown ablation row(s) {', '.join(unknown)}; choose from {', '.join(ABLATION_ROWS)}")
    if not rows:
        raise InputError("no ablation rows to run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _: None)
    reference_pose = torch.as_tensor(reference_pose, dtype=torch.float64).reshape(4, 4)
    center = volume.center.to(torch.float64).cpu()
    points = evaluation.target_points(volume.to("cpu"), N_TARGET_POINTS, seed=seed)
    test_seed = int(seed) + TEST_SEED_OFFSET
    images, truths = test_cases(volume, detector, reference_pose, train_config.pose_range, n, test_seed,
                                train_config.renderer, test_augmentation)
    refine_options = dict(refine_options or {})
    options = {"local": make_options(**refine_options),
               "wide": make_options(**{**refine_options, "search": "wide", "search_rotation_deg": SEARCH_ABOUT_NETWORK[0],
                                       "search_translation_mm": SEARCH_ABOUT_NETWORK[1]})}
    cases: list[list] = []
    summaries: list[dict] = []
    models: dict[str, tuple] = {}
    with keep_rows_on_interrupt(out / "ablation.partial.csv", CASE_COLUMNS, lambda: cases):
        for row in rows:
            switches = ABLATION_ROWS[row]
            base = _trained_row(row)
            if base not in models:
                s = ABLATION_ROWS[base]
                network = replace(train_config.network, decoder=s["decoder"], attention=s["attention"],
                                  positional_embedding=s["attention"])
                config = replace(train_config, network=network, incremental=s["incremental"])
                log(f"ablation {base}: training ({_budget(config)})")
                with tempfile.TemporaryDirectory(prefix="diffreg-ablation-") as folder:  # loaded as register does
                    path = Path(folder) / "model.pt"
                    result = train(volume, detector, reference_pose, config, checkpoint_path=path, bar=False)
                    initializer = PoseNetworkInitializer.from_file(path, volume, detector, hypotheses=hypotheses,
                                                                   device=volume.mu.device)
                models[base] = (initializer, float(result.elapsed_s), int(result.step))
            initializer, train_seconds, train_steps = models[base]
            refine = switches.get("refine")
            threshold = refined_success_mm if refine else network_success_mm
            row_cases = []
            for k in range(n):
                t0 = time.perf_counter()
                poses = initializer(images[k], detector, volume)
                estimate = poses[0]
                if refine:
                    image = images[k].to(volume.mu.device, volume.mu.dtype)
                    estimate = register(volume, image, detector, FixedPose(poses), options[refine]).pose
                seconds = time.perf_counter() - t0
                errors = case_errors(estimate, truths[k], points, detector, center)
                line = [row, k, *(errors[c] for c in CASE_COLUMNS[2:-2]), errors["mtre_mm"] < threshold, seconds]
                cases.append(line)
                row_cases.append(line)
            summary = _summary(row, row_cases, threshold, train_seconds, train_steps)
            summaries.append(summary)
            log(f"ablation {row}: mTRE {summary['mtre_mm_mean']:.2f} +- {summary['mtre_mm_std']:.2f} mm "
                f"(median {summary['mtre_mm_median']:.2f}), SR@{threshold:g} mm {summary['success_rate']:.0%}")
    paths = _write(out, cases, summaries, ct_name, train_config, n, refine_options)
    return {"paths": paths, "rows": summaries}


def _budget(config) -> str:
    return f"{config.steps} steps" if getattr(config, "steps", None) else f"{config.minutes:g} min"


def _summary(row: str, cases: list[list], threshold: float, train_seconds: float, train_steps: int) -> dict:
    columns = {c: [line[i] for line in cases] for i, c in enumerate(CASE_COLUMNS)}

    def mean_std(values):
        return (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)

    summary = {"row": row, "n": len(cases)}
    for name in ("mtre_mm", "mpd_mm", *AXES):
        summary[f"{name}_mean"], summary[f"{name}_std"] = mean_std(columns[name])
    summary["mtre_mm_median"] = statistics.median(columns["mtre_mm"])
    summary.update(success_threshold_mm=threshold, success_rate=sum(columns["success"]) / len(cases),
                   train_seconds=train_seconds, train_steps=train_steps,
                   seconds_per_case=statistics.fmean(columns["seconds"]))
    return summary


def _write(out: Path, cases, summaries, ct_name, config, n, refine_options) -> dict:
    write_csv(out / "ablation_cases.csv", CASE_COLUMNS, cases)
    write_csv(out / "ablation.csv", SUMMARY_COLUMNS, [[s[c] for c in SUMMARY_COLUMNS] for s in summaries])

    def pm(s, name, digits=2):
        return f"{fmt(s[name + '_mean'], digits)} ± {fmt(s[name + '_std'], digits)}"

    header = ["row", "mTRE (mm)", "median mTRE", "mPD (mm)", "Rx (°)", "Ry (°)", "Rz (°)", "Tx (mm)", "Ty (mm)",
              "Tz (mm)", "SR", "train (s, steps)", "s / case"]
    body = [[s["row"], pm(s, "mtre_mm"), fmt(s["mtre_mm_median"], 2), pm(s, "mpd_mm"),
             *(pm(s, a) for a in AXES), f"{s['success_rate']:.0%} (< {s['success_threshold_mm']:g} mm)",
             f"{s['train_seconds']:.0f}, {s['train_steps']}", fmt(s["seconds_per_case"], 2)] for s in summaries]
    network = config.network
    lines = [f"# Pose-network ablation ({ct_name})", "",
             f"{n} held-out DRRs at poses uniform in ±{config.pose_range.rotation_deg[0]:g}° / "
             f"±{config.pose_range.translation_mm[0]:g} mm about the reference view; backbone {network.backbone}, "
             f"{network.image_size} px, budget {_budget(config)} per trained row, seed {config.seed}; "
             f"refinement (+D): {refine_options or 'the registration defaults'}; +D+S: a wide search within "
             f"±{SEARCH_ABOUT_NETWORK[0]:g}° / ±{SEARCH_ABOUT_NETWORK[1]:g} mm of the network's poses first.", "",
             "A backbone, B structure decoder, C self-attention + 2D positional embedding, * incremental learning, "
             "D registration from the network's poses. SR: mTRE below 10 mm (network) or 2 mm (after refinement).",
             "", *markdown_table(header, body), ""]
    (out / "ablation.md").write_text("\n".join(lines), encoding="utf-8")
    from ..figures.composites import save_png
    from ..figures.plots import line_plot

    series = {}
    for s in summaries:
        values = sorted(line[2] for line in cases if line[0] == s["row"])
        series[s["row"]] = (list(range(1, len(values) + 1)), [max(v, 1e-3) for v in values])
    save_png(out / "ablation.png", line_plot(series, title=f"Pose-network ablation ({ct_name}): mTRE per test case",
                                             xlabel="test case (sorted)", ylabel="mTRE (mm)", log_y=True))
    return {"csv": out / "ablation.csv", "cases": out / "ablation_cases.csv", "markdown": out / "ablation.md",
            "png": out / "ablation.png"}
