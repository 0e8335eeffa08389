"""Independent reference computations shared by the engine tests (written without the engine's own code paths).

Imported by test modules as ``from references import ...`` (Testing/ is on sys.path through pytest's rootdir).
"""

from __future__ import annotations

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from DiffRegLogic.geometry import axis_rotation, make_rigid


def oblique_affine(spacing=(1.3, 0.9, 1.7), angles=(0.3, -0.5, 0.2), origin=(-20.0, 15.0, -30.0)) -> torch.Tensor:
    """An ijk->RAS affine with a rotated (oblique) direction matrix and anisotropic spacing, float64."""
    rot = (axis_rotation("Z", torch.tensor(angles[0], dtype=torch.float64))
           @ axis_rotation("X", torch.tensor(angles[1], dtype=torch.float64))
           @ axis_rotation("Y", torch.tensor(angles[2], dtype=torch.float64)))
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rot @ torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return affine


def look_at_pose(source, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """camera_from_world (4, 4) float64 with the source at ``source`` and the principal ray through ``target``.

    Built directly from the convention (z towards the target, y = image rows
    pointing away from ``up``), independent of the C-arm parameterisations.
    """
    source = torch.as_tensor(source, dtype=torch.float64)
    z = torch.as_tensor(target, dtype=torch.float64) - source
    z = z / z.norm()
    x = torch.linalg.cross(z, -torch.as_tensor(up, dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    world_from_camera = torch.stack([x, y, z], 1)
    rot = world_from_camera.T
    return make_rigid(rot, -rot @ source)


def reference_siddon(mu: np.ndarray, affine: np.ndarray, source: np.ndarray, target: np.ndarray) -> float:
    """Textbook Siddon for ONE ray, written independently of the engine (numpy, float64).

    Transforms the ray to index space, intersects it with every voxel-boundary
    plane of every axis, sorts all the parameters, and sums segment length x
    mu of the voxel containing each segment's midpoint. Returns the line
    integral in mm x (1/mm).
    """
    inv = np.linalg.inv(affine)
    s = inv[:3, :3] @ source + inv[:3, 3]
    t = inv[:3, :3] @ target + inv[:3, 3]
    d = t - s
    shape_ijk = mu.shape[::-1]
    alphas = [0.0, 1.0]
    for axis in range(3):
        if abs(d[axis]) < 1e-12:
            continue
        planes = np.arange(shape_ijk[axis] + 1) - 0.5
        alphas.extend(((planes - s[axis]) / d[axis]).tolist())
    alphas = np.unique(np.clip(np.asarray(alphas), 0.0, 1.0))
    total = 0.0
    for a0, a1 in zip(alphas[:-1], alphas[1:]):
        mid = s + 0.5 * (a0 + a1) * d
        idx = np.floor(mid + 0.5).astype(int)
        if np.all(idx >= 0) and np.all(idx < np.asarray(shape_ijk)):
            total += (a1 - a0) * mu[idx[2], idx[1], idx[0]]
    return total * np.linalg.norm(target - source)


XA = "1.2.840.10008.5.1.4.1.1.12.1"
"""SOP class UID of an X-ray angiographic image."""
DX = "1.2.840.10008.5.1.4.1.1.1.1"
"""SOP class UID of a digital X-ray image."""


def write_dicom(path, pixels, sop=XA, photometric="MONOCHROME2", **tags):
    """A minimal uncompressed DICOM file (uint16) with the given tags; pixels (H, W) or (F, H, W)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA" if sop == XA else "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(str(path), enforce_file_format=True)
    return path
