"""The validated JSON reader: every file that is not a small UTF-8 JSON object of finite numbers is refused by name."""

from __future__ import annotations

import json

import pytest

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.files import read_geometry, read_pose, write_json
from DiffRegLogic.limits import MAX_JSON_BYTES
from DiffRegLogic.validation.json_files import json_depth, read_json_object

GEOMETRY = {"source_to_detector_mm": 1000.0, "rows": 8, "cols": 8, "pixel_spacing_mm": [1.0, 1.0]}


def _write(tmp_path, name: str, raw: bytes):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("raw, message", [
    (bytes(range(256)), "holds binary data .NUL bytes at offset 0"),
    (b'{"a": "' + bytes(range(128, 256)) + b'"}', "not UTF-8 text: byte 0x80 at offset 7"),
    ('{"rows": "Gr\u00f6\u00dfe"}'.encode("latin-1"), r"not UTF-8 text: byte 0xf6 .*Latin-1"),
    (json.dumps(GEOMETRY).encode("utf-16"), "UTF-16"),
    (json.dumps(GEOMETRY).encode("utf-16-le"), "UTF-16"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
    (b'{"source_to_detector_mm": NaN}', "holds the number NaN; JSON numbers must be finite"),
    (b'{"source_to_detector_mm": -Infinity}', "holds the number -Infinity"),
    (b'{"source_to_detector_mm": 1e400}', "holds the number 1e400"),
    (b'{"rows": ' + b"9" * 5000 + b"}", "cannot be read"),
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (b"{rows: 3", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b"3.5", "must hold a JSON object, got float"),
])
def test_bad_json_files_are_refused_with_the_reason(tmp_path, raw, message):
    path = _write(tmp_path, "g.json", raw)
    with pytest.raises(InputError, match=message):
        read_json_object(path, "geometry")
    assert path.read_bytes() == raw  # read only


def test_size_folders_and_missing_files(tmp_path):
    big = _write(tmp_path, "big.json", b'{"a": "' + b"x" * MAX_JSON_BYTES + b'"}')
    with pytest.raises(InputError, match=r"is \d+ bytes; .* limit is 1000000"):
        read_json_object(big, "pose")
    with pytest.raises(InputError, match="is a folder"):
        read_json_object(tmp_path, "pose")
    with pytest.raises(InputError, match="pose file not found"):
        read_json_object(tmp_path / "none.json", "pose")


def test_a_bom_and_a_utf8_file_read_as_json(tmp_path):
    path = _write(tmp_path, "g.json", b"\xef\xbb\xbf" + json.dumps(dict(GEOMETRY, note="\u00e9")).encode())
    assert read_json_object(path, "geometry")["note"] == "\u00e9"
    assert read_geometry(path).rows == 8


def test_json_depth_counts_containers():
    assert json_depth(3) == 0
    assert json_depth([]) == 0
    assert json_depth([1]) == 1
    assert json_depth({"a": [[1], 2]}) == 3
    assert json_depth({"a": [[[[[[1]]]]]]}, limit=3) > 3  # stops early but still reports "too deep"


@pytest.mark.parametrize("change, message", [
    ({"source_to_detector_mm": 10**400}, "source_to_detector_mm must be a finite number, got an integer of 401 digits"),
    ({"source_to_detector_mm": 1e308}, r"source_to_detector_mm must be >= 1 mm and <= 100000 mm, got 1e\+308 mm"),
    ({"pixel_spacing_mm": [1.0, 6.7e16]}, r"pixel_spacing_mm\[1\] must be >= 0.0001 mm and <= 100 mm"),
    ({"principal_point_px": [2952.0, 1e7]}, r"principal_point_px\[1\] must be >= -1e\+06 and <= 1e\+06"),
    ({"rows": 100_000, "cols": 100_000}, "rows must be >= 1 and <= 16384"),
    ({"rows": 16384, "cols": 16384}, "rows x cols = 268435456 pixels; at most 67108864"),
])
def test_geometry_values_out_of_range_name_the_key(tmp_path, change, message):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(dict(GEOMETRY, **change)))
    with pytest.raises(InputError, match=message):
        read_geometry(path)


@pytest.mark.parametrize("matrix, message", [
    ([[1, 0, 0, 1e300], [0, 1, 0, 0], [0, 0, 1, 500], [0, 0, 0, 1]], "translation"),
    ([[1, 0, 0, 10**400], [0, 1, 0, 0], [0, 0, 1, 500], [0, 0, 0, 1]], "camera_from_world"),
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "camera_from_world"),
    ("identity", "camera_from_world"),
])
def test_pose_files_with_extreme_or_malformed_matrices(tmp_path, matrix, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"camera_from_world": matrix}))
    with pytest.raises(InputError, match=message):
        read_pose(path)


def test_write_json_refuses_non_finite_values_and_writes_nothing(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(InputError, match="NaN or infinite"):
        write_json(path, {"camera_from_world": [[float("nan")]]})
    assert not path.exists()
    write_json(path, {"name": "\u00e9"})
    assert json.loads(path.read_bytes().decode("utf-8")) == {"name": "\u00e9"}
