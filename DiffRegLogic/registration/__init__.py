"""2D/3D rigid registration: find the CT pose whose DRR matches the X-ray.

``register(volume, xray, detector, start, options)`` optimises the pose
(camera_from_world) coarse to fine and returns a `RegistrationResult`.

* **Parameters** (`parameters`): by default SE(3) exponential coordinates of
  a motion of the CT about its centre, ``pose = initial @ T(c) exp(xi)
  T(-c)`` with ``xi = (omega [rad], v [mm])``; or the seed paper's spherical
  C-arm model (``parameterization="spherical"``).
* **Coarse to fine** (`pyramid`): each level renders a downsampled detector
  (same physical extent), compares with the X-ray area-averaged to that size,
  and uses a CT averaged to about the detector pixel at the isocentre. Step
  sizes shrink with the pixel size.
* **Plug points**: the start (`initializers`: a pose, DICOM/clinical angles,
  random starts, a transform node, a network), the similarity (a name, a
  `DiffRegLogic.similarity.Measure` or any callable), and the level
  optimiser (`optimizers`: the name table; `levels`: gradient family and
  Levenberg-Marquardt; `baselines`: Powell, Nelder-Mead, CMA-ES).
* **Settings** (`options`): `RegistrationOptions`, built by `make_options`
  everywhere a user's settings come in.
* **Several views** (`views`): `register_views(volume, [View(...), ...],
  start)` registers one pose to two or more X-rays of known relative
  geometry (biplane, or C-arm shots whose angles give their relation).
* **Progress and cancel** (`context`, `results`): a callback per iteration;
  cancelling returns the best pose so far.

Modules: `options`, `optimizers`, `steps`, `levels`, `baselines`,
`initializers`, `parameters`, `pyramid`, `checks`, `context`, `results`,
`engine`, `views`.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".engine": "register register_batch",
    ".views": "View register_views relative_poses views_from_starts camera_error_mm",
    ".options": "RegistrationOptions make_options PARAMETERIZATIONS DEFAULT_STEPS BASELINE_SCALE",
    ".optimizers": "OPTIMIZERS GRADIENT_OPTIMIZERS BASELINE_OPTIMIZERS",
    ".results": "Progress RegistrationResult",
    ".parameters": "PoseParameters",
    ".pyramid": "Level ViewLevel volume_factor build_levels build_level build_view_levels preview_level "
                "level_detector resize_image",
    ".initializers": "Initializer FixedPose ClinicalAngles RandomStarts initial_poses",
    ".levels": "LevelResult LevelOptimizer GradientLevel LevenbergMarquardtLevel",
    ".context": "RegistrationContext Cancelled",
    ".steps": "GradientOptimizer GradientDescent Momentum Adam LevenbergMarquardt make_gradient_optimizer",
    "..geometry.motions": "random_motions perturb_pose",
})
__all__ = sorted(__getattr__.table)
