"""Tests of DiffRegLogic.geometry.files: geometry and pose JSON.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.geometry.files import GEOMETRY_KEYS, detector_from_dict, detector_to_dict, pose_to_dict, read_geometry, read_pose, write_json

# --------------------------------------------------------------------------
from file_references import DT
# io: geometry and pose JSON
# --------------------------------------------------------------------------

GEOMETRY = {"source_to_detector_mm": 1020.0, "rows": 256, "cols": 320, "pixel_spacing_mm": [0.4, 0.3]}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_read_geometry_minimal_defaults(tmp_path):
    det = read_geometry(_write(tmp_path, "geom.json", GEOMETRY))
    assert det == Detector(rows=256, cols=320, sdd=1020.0, pixel_spacing=(0.4, 0.3))
    assert det.principal_point is None
    k = det.intrinsics().numpy()
    np.testing.assert_allclose(k, [[1020 / 0.3, 0, 159.5], [0, 1020 / 0.4, 127.5], [0, 0, 1]], rtol=1e-14)
    # a single number is an isotropic spacing
    det = detector_from_dict({**GEOMETRY, "pixel_spacing_mm": 0.5})
    assert det.pixel_spacing == (0.5, 0.5)


@pytest.mark.parametrize("pp", [None, (100.25, 140.5)])
def test_geometry_json_roundtrip(tmp_path, pp):
    det = Detector(rows=200, cols=150, sdd=987.5, pixel_spacing=(0.31, 0.29), principal_point=pp)
    data = detector_to_dict(det)
    assert data["pixel_spacing_mm"] == [0.31, 0.29]
    assert ("principal_point_px" in data) == (pp is not None)
    path = tmp_path / "geom.json"
    write_json(path, data)
    back = read_geometry(path)
    assert back == det
    np.testing.assert_array_equal(back.intrinsics().numpy(), det.intrinsics().numpy())
    assert detector_from_dict(json.loads(json.dumps(data))) == det


@pytest.mark.parametrize("key", GEOMETRY_KEYS)
def test_geometry_missing_key_raises(tmp_path, key):
    data = {k: v for k, v in GEOMETRY.items() if k != key}
    with pytest.raises(InputError, match=f"missing '{key}'"):
        read_geometry(_write(tmp_path, "geom.json", data))


@pytest.mark.parametrize(
    "key, value",
    [
        ("rows", "256"),
        ("rows", 256.0),
        ("cols", [320]),
        ("pixel_spacing_mm", "0.4"),
        ("pixel_spacing_mm", [0.4, 0.3, 0.2]),
        ("principal_point_px", [1.0]),
        ("principal_point_px", "centre"),
    ],
)
def test_geometry_wrong_type_raises_naming_key(key, value):
    with pytest.raises(InputError, match=key):
        detector_from_dict({**GEOMETRY, key: value})


@pytest.mark.parametrize(
    "key, value",
    [("source_to_detector_mm", "far"), ("source_to_detector_mm", [1000.0]), ("pixel_spacing_mm", ["a", 0.3]),
     ("principal_point_px", [None, 3.0])],
)
def test_geometry_non_numeric_value_names_key(key, value):
    with pytest.raises(InputError, match=key):
        detector_from_dict({**GEOMETRY, key: value})


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("source_to_detector_mm", -1000.0, "source_to_detector_mm"),
        ("source_to_detector_mm", 0.0, "source_to_detector_mm"),
        ("rows", -256, "rows"),
        ("cols", 0, "cols"),
        ("pixel_spacing_mm", [0.4, -0.3], "pixel_spacing_mm"),
        ("pixel_spacing_mm", -0.3, "pixel_spacing_mm"),
    ],
)
def test_geometry_negative_values_raise(tmp_path, key, value, match):
    with pytest.raises(InputError, match=match):
        read_geometry(_write(tmp_path, "geom.json", {**GEOMETRY, key: value}))


@pytest.mark.parametrize("key, value", [("source_to_detector_mm", -1000.0), ("pixel_spacing_mm", [0.4, -0.3])])
def test_geometry_negative_values_name_key_and_file(tmp_path, key, value):
    path = _write(tmp_path, "geom.json", {**GEOMETRY, key: value})
    with pytest.raises(InputError, match=f"geom.json.*{key}|{key}.*geom.json"):
        read_geometry(path)


def test_geometry_file_errors(tmp_path):
    with pytest.raises(InputError, match="geometry file not found"):
        read_geometry(tmp_path / "none.json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_geometry(_write(tmp_path, "bad.json", "{rows: 3"))
    with pytest.raises(InputError, match="must hold a JSON object, got list"):
        read_geometry(_write(tmp_path, "list.json", [1, 2]))


def _rigid_pose():
    c, s = math.cos(0.4), math.sin(0.4)
    return np.array([[c, -s, 0, 10.0], [s, c, 0, -20.0], [0, 0, 1, 700.0], [0, 0, 0, 1]])


def test_pose_json_roundtrip(tmp_path):
    pose = torch.as_tensor(_rigid_pose() @ np.block([[np.eye(3)[[1, 2, 0]], np.zeros((3, 1))], [np.zeros((1, 3)), 1]]))
    path = tmp_path / "out" / "pose.json"
    write_json(path, pose_to_dict(pose))
    raw = json.loads(path.read_text())
    np.testing.assert_array_equal(np.array(raw["camera_from_world"]), pose.numpy())
    back = read_pose(path)
    assert back.shape == (4, 4) and back.dtype == DT
    np.testing.assert_array_equal(back.numpy(), pose.numpy())
    # a (1, 4, 4) float32 pose is stored as a plain 4x4
    assert np.array(pose_to_dict(pose[None].float())["camera_from_world"]).shape == (4, 4)


@pytest.mark.parametrize(
    "matrix, match",
    [
        ((np.diag([2.0, 2.0, 2.0, 1.0]) @ _rigid_pose()).tolist(), "not rigid"),
        ((_rigid_pose() + np.diag([0, 0, 0, 1.0])).tolist(), "last row"),
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "4x4"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, "x"]], "4x4 array of numbers"),
        ([[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "4x4 array of numbers"),
    ],
)
def test_pose_json_bad_matrix_raises(tmp_path, matrix, match):
    path = _write(tmp_path, "pose.json", {"camera_from_world": matrix})
    with pytest.raises(InputError, match=match):
        read_pose(path)


def test_pose_json_missing_key_and_file(tmp_path):
    with pytest.raises(InputError, match="missing 'camera_from_world'"):
        read_pose(_write(tmp_path, "pose.json", {"pose": np.eye(4).tolist()}))
    with pytest.raises(InputError, match="pose file not found"):
        read_pose(tmp_path / "absent.json")
