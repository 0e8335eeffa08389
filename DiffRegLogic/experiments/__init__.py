"""The seed paper's evidence as experiments that write CSV, Markdown and PNG files, and the demo scenario.

* `landscape`: the similarity along each of the six pose axes around the
  true pose (the paper's Fig. 5): rotations rx, ry, rz (deg, components of
  the rotation vector of a rotation of the CT about its centre) and
  translations tx, ty, tz (mm, world axes), one parameter at a time.
* `robustness`: Monte Carlo registrations from random starts around the
  true pose (the paper's Table 2), the same starts for every optimiser.
* `polychromatic`: a realistic simulated X-ray (polychromatic physics,
  scatter, heel, noise, blur) registered with a monochromatic and a
  polychromatic DRR model from the same starts (the seed poster's claim).
* `realism`: registration against realistic simulated X-rays (scatter,
  noise, blur, heel, instruments, truncation, processing, collimation,
  polychromatic physics; `physics.xray_simulation.PRESETS`), per
  registration variant (`VARIANTS`).
* `ablation`: the pose network's parts (the MICCAI 2023 poster's Table 3),
  each row trained with the same budget and tested on held-out DRRs.
* `network_realism`: a trained pose network on realistic simulated X-rays
  (the realism presets), alone and refined by each registration variant.
* `similarity_landscapes`, `similarity_convergence`, `similarity_robustness`:
  the learned similarity (Chen & Kong, WACV 2026) against image
  similarities: capture range along the six axes (`capture_range`, their
  Fig. 3), mTRE vs iteration and time per optimiser (Fig. 4 right), and
  success rate from seeded starts with and without a polish.
* `demo`: the scenario of ``diffreg demo`` (detector, target and start pose).

Poses are camera_from_world (4, 4) (README, "Geometry"); a motion row is
(rotation vector rad (3), translation mm (3)) applied about the CT centre by
`geometry.perturb_pose`. Errors are measured against ``true_pose`` with
`evaluation` (mTRE over `evaluation.target_points(volume, 1000)`, rotation
and translation error at the CT centre). `reports` writes the tables and
pictures.
"""

from .._lazy import lazy_exports

REALISM_VARIANTS: dict[str, dict] = {
    "zncc": {},
    "footprint": {"footprint_mask": True},
    "matched": {"model": "matched"},
    "real": {"robust": "tukey", "footprint_mask": True, "model": "matched"},
    "real_scatter": {"robust": "tukey", "footprint_mask": True, "nuisance": "scatter", "model": "matched"},
    "mi": {"similarity": "mi"},
    "real_mi": {"similarity": "mi", "robust": "tukey", "footprint_mask": True, "model": "matched"},
    "robust": {"robust": "tukey", "footprint_mask": True},
    "scatter": {"nuisance": "scatter"},
    "robust_scatter": {"robust": "tukey", "footprint_mask": True, "nuisance": "scatter"},
    "wide": {"search": "wide"},
    "gradient_ncc": {"similarity": "gradient_ncc"},
    "patch_zncc": {"similarity": "patch_zncc"},
}
"""Built-in registration variants of `realism` (torch-free, for the command line): name -> `make_options`
settings applied on top of the experiment's options."""

ABLATION_ROWS: dict[str, dict] = {
    "A": {"decoder": False, "attention": False, "incremental": False},
    "A+B": {"decoder": True, "attention": False, "incremental": False},
    "A+C": {"decoder": False, "attention": True, "incremental": False},
    "A+B+C": {"decoder": True, "attention": True, "incremental": False},
    "[A+B+C]*": {"decoder": True, "attention": True, "incremental": True},
    "[A+B+C]*+D": {"decoder": True, "attention": True, "incremental": True, "refine": "local"},
    "[A+B+C]*+D+S": {"decoder": True, "attention": True, "incremental": True, "refine": "wide"},
}
"""`ablation` rows (torch-free, for the command line): row name -> the network switches (the positional
embedding goes with the attention), incremental learning, and refinement: ``+D`` the registration from the
network's poses, ``+D+S`` the same after a wide search about them (`ablation_study.SEARCH_ABOUT_NETWORK`)."""

__getattr__, __dir__ = lazy_exports(__name__, {
    ".landscape_study": "landscape AXES RENDER_BATCH",
    ".robustness_study": "robustness ROBUSTNESS_COLUMNS MTRE_CURVE_MAX_MM",
    ".polychromatic_study": "polychromatic POLY_COLUMNS",
    ".realism_study": "realism VARIANTS REALISM_COLUMNS CONVENTION_MODES as_line_integral",
    ".ablation_study": "ablation CASE_COLUMNS SUMMARY_COLUMNS SEARCH_ABOUT_NETWORK",
    ".network_realism_study": "network_realism NETWORK_REALISM_COLUMNS",
    ".similarity_study": "capture_range similarity_landscapes similarity_convergence CAPTURE_RTOL CAPTURE_COLUMNS "
                         "CONVERGENCE_COLUMNS CONVERGENCE_START_COLUMNS CONVERGENCE_POINTS BASIN_MM",
    ".similarity_robustness_study": "similarity_robustness SIMILARITY_ROBUSTNESS_COLUMNS",
    ".common": "PLOT_SIZE N_TARGET_POINTS",
    ".demo": "DEMO_DETECTOR DEMO_SOURCE_TO_ISOCENTER_MM DEMO_TARGET_DEG DEMO_PERTURBATION demo_detector demo_poses",
})
__all__ = sorted(__getattr__.table) + ["REALISM_VARIANTS", "ABLATION_ROWS"]
