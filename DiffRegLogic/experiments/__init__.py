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
* `demo`: the scenario of ``diffreg demo`` (detector, target and start pose).

Poses are camera_from_world (4, 4) (README, "Geometry"); a motion row is
(rotation vector rad (3), translation mm (3)) applied about the CT centre by
`geometry.perturb_pose`. Errors are measured against ``true_pose`` with
`evaluation` (mTRE over `evaluation.target_points(volume, 1000)`, rotation
and translation error at the CT centre). `reports` writes the tables and
pictures.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".landscape_study": "landscape AXES RENDER_BATCH",
    ".robustness_study": "robustness ROBUSTNESS_COLUMNS MTRE_CURVE_MAX_MM",
    ".polychromatic_study": "polychromatic POLY_COLUMNS",
    ".common": "PLOT_SIZE N_TARGET_POINTS",
    ".demo": "DEMO_DETECTOR DEMO_SOURCE_TO_ISOCENTER_MM DEMO_TARGET_DEG DEMO_PERTURBATION demo_detector demo_poses",
})
__all__ = sorted(__getattr__.table)
