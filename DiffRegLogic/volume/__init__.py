"""The CT: `Volume` (attenuation on a voxel grid in RAS), HU -> mu, CT files, phantoms, cached pyramids.

Modules: `ct` (Volume), `hu` (HUToMu and its inverse), `io` (read and write
CT files, LPS -> RAS), `phantoms` (the built-in chest phantom and test
shapes), `cache` (downsampled copies per CT, weak per-tensor caches).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".ct": "Volume",
    ".hu": "HUToMu hu_from_mu",
    ".cache": "tensor_cache downsample_cached",
    ".io": "LPS_TO_RAS VOLUME_SUFFIXES sitk_affine_ras read_ct_array read_volume write_volume",
    ".phantoms": "grid_affine world_coordinates gaussian_smooth chest_phantom_hu chest_phantom",
})
__all__ = sorted(__getattr__.table)
