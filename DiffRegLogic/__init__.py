"""DiffReg engine: differentiable DRRs and 2D/3D CT-to-X-ray registration.

No Qt and no Slicer here; the Slicer module and the command line tool are thin
layers over these subpackages, in import order:

* `geometry`: the detector, rigid maths, pose parameterisations, C-arm and
  clinical angles, pose sampling, geometry/pose JSON;
* `volume`: the CT (`Volume`), HU -> mu, CT files, phantoms;
* `physics`: attenuation tables, tube spectra, detector response, materials, realism;
* `drr`: `render`, the backend table, the Siddon/trilinear kernels (PyTorch,
  numba, Triton), the Jacobian, `DRR` (an ``nn.Module``);
* `xray`: the `XRay` type, readers, DICOM, intensity conventions, writing images;
* `similarity`: the measures, their name tables and the `Measure` plug point;
* `registration`: `register`, options, initialisers, level optimisers, the pyramid;
* `learning`: the room for learned initialisers and similarities;
* `evaluation`: mTRE, mPD, pose errors, success rates;
* `figures`: overlays, checkerboards, line charts;
* `experiments`: the seed paper's experiments and the demo scenario;
* `cli`: the ``diffreg`` command, one module per command;
* `mrml`: the bridge to 3D Slicer's MRML nodes (plus the panel's torch-free settings).

The geometry convention is stated once in `DiffRegLogic.geometry` and the
README. The names below are imported on first use, so that torch-free
modules (`DiffRegLogic.mrml.settings`, `DiffRegLogic.errors`, the CLI's
parser) load where torch is not installed yet or is not needed. Module paths
of version 0.1 that moved (``DiffRegLogic.io``, ``.settings``, ...) still
import (`_compat`).

Threads: torch and numba both run on OpenMP, whose idle threads by default
spin for a while before they sleep; two DiffReg processes on the same cores
then spend their time spinning against each other (two registrations at
once on 2 cores: 5.2 s each instead of 1.4 s, docs/benchmarks.md). Unless the environment says
otherwise, importing DiffReg before torch sets ``OMP_WAIT_POLICY=PASSIVE``
(idle threads sleep at once); ``DIFFREG_THREADS=N`` (or
`devices.set_threads`) caps the threads of the renderers and of torch.
See ``bench/bench_concurrent.py`` for the measurement.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch or numba first loads it

from . import _compat  # noqa: E402
from ._lazy import lazy_exports

__version__ = "0.1.0"

_compat.install()

__getattr__, __dir__ = lazy_exports(__name__, {
    ".drr": "render DRR",
    ".geometry": "Detector",
    ".volume": "Volume HUToMu",
    ".errors": "InputError",
    ".registration": "register register_batch register_views View RegistrationOptions make_options",
    ".similarity": "Measure",
    ".xray": "XRay read_xray",
})
__all__ = sorted(__getattr__.table) + ["__version__"]
