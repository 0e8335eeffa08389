"""DiffReg engine: differentiable DRRs and 2D/3D CT-to-X-ray registration.

No Qt and no Slicer here; the Slicer module and the command line tool are thin
layers over these modules. The geometry convention is stated once in
`DiffRegLogic.geometry` and the README.
"""

from .drr import render
from .errors import InputError
from .geometry import Detector
from .volume import HUToMu, Volume

__version__ = "0.1.0"
__all__ = ["render", "Detector", "Volume", "HUToMu", "InputError", "__version__"]
