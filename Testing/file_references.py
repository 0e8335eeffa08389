"""Independent references for the file tests: ITK geometry and the HU -> mu map written out by hand (numpy).

Shared by Testing/volume, Testing/xray and Testing/geometry; nothing here calls the engine.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import SimpleITK as sitk
import torch

DT = torch.float64
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MU_WATER = 0.0206  # the documented default


def axis_angle_matrix(axis, angle_deg):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


ROT30 = axis_angle_matrix([1.0, 2.0, 3.0], 30.0)  # an oblique direction matrix
SPACING = np.array([0.7, 1.1, 2.5])  # anisotropic (i, j, k)
ORIGIN = np.array([-12.5, 30.0, 7.25])


def oblique_affine(rot=ROT30, spacing=SPACING, origin=ORIGIN):
    a = np.eye(4)
    a[:3, :3] = rot * spacing[None, :]
    a[:3, 3] = origin
    return a


def hu_to_mu_reference(hu, mu_water=MU_WATER):
    """Default map written from its definition: mu = mu_water (1 + HU / 1000), never negative."""
    return np.maximum(0.0, mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0))


def N(x):
    return x.detach().cpu().numpy()


def make_itk_image(array_kji, spacing, origin, direction_lps):
    img = sitk.GetImageFromArray(array_kji)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in np.asarray(direction_lps).reshape(-1)])
    return img


def itk_lps_matrix(spacing, origin, direction_lps):
    """ITK's index -> LPS physical matrix, by hand: [D diag(spacing) | origin]."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction_lps).reshape(3, 3) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def write_sitk(path, array, spacing):
    """Write ``array`` (numpy, z-y-x) with ``spacing`` through SimpleITK to ``path`` (format by suffix); returns path."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def sha256(path) -> str:
    """The file's SHA-256, to assert that a failed read or command left an input unchanged."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
