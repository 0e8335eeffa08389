"""The ``diffreg`` command line tool: a thin layer over the engine, one module per command.

`main` is the console script (``diffreg = DiffRegLogic.cli:main``). Modules:
`app` (parser, error contract), `options` (shared argument groups,
torch-free), `common` (what running commands share), and the commands
`demo`, `register`, `render`, `pose`, `experiment`.
"""

from .._lazy import lazy_exports
from .app import build_parser, main

__getattr__, __dir__ = lazy_exports(__name__, {
    ".options": "PHANTOM POLYCHROMATIC",
    ".common": "load_ct DEFAULT_EXPERIMENT_PHOTONS DEFAULT_EXPERIMENT_BLUR_MM",
    "..experiments.demo": "DEMO_DETECTOR DEMO_SOURCE_TO_ISOCENTER_MM DEMO_TARGET_DEG DEMO_PERTURBATION demo_poses",
    "..geometry.motions": "pose_difference",
    "..figures.composites": "overlay_rgb",
})
__all__ = ["main", "build_parser"] + sorted(__getattr__.table)
