"""The intra-operative X-ray: its image in the renderer's convention and, from DICOM, its C-arm geometry.

`read_xray` turns a file into an `XRay`: an (H, W) float64 image in the
line-integral convention of the DRR (bone bright), the `Detector` when the
file states it, the clinical C-arm angles for an initial pose, and a mask of
collimated borders.

Modules: `image` (the XRay type, `check_xray`), `readers` (`read_xray`,
`xray_from_array`), `dicom` (tags, geometry, modality LUT, shutters),
`intensity` (conventions: line integral, -log, reflection), `collimation`
(borders, crop, flip with the detector following), `files` (suffixes,
`write_image`).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".image": "XRay CLINICAL_TAGS check_xray",
    ".readers": "read_xray xray_from_array",
    ".intensity": "INTENSITY_CONVENTIONS I0_PERCENTILE INTENSITY_FLOOR",
    ".collimation": "COLLIMATION_TOL detect_collimation crop_detector flip_detector crop_xray",
    ".files": "PILLOW_SUFFIXES SITK_SUFFIXES DICOM_SUFFIXES XRAY_SUFFIXES IMAGE_SUFFIXES to_uint8 check_image_suffix "
              "write_image",
})
__all__ = sorted(__getattr__.table)
