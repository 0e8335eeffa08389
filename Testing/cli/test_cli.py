"""The `diffreg` command line: demo, render and pose end to end, and its error handling."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from DiffRegLogic import Detector, render
from DiffRegLogic.cli import main
from DiffRegLogic.experiments.demo import DEMO_PERTURBATION
from DiffRegLogic.geometry import clinical_to_pose
from DiffRegLogic.volume.io import read_volume
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict

GEOMETRY = {"source_to_detector_mm": 1000.0, "rows": 24, "cols": 30, "pixel_spacing_mm": [2.0, 1.5],
            "principal_point_px": [14.0, 12.5]}


@pytest.fixture()
def ct_file(tmp_path):
    """A small CT (HU) with an oblique LPS direction, written with SimpleITK."""
    rng = np.random.default_rng(0)
    hu = (rng.uniform(-1000, 1500, size=(14, 16, 18))).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.2, 2.5))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pose_then_render_matches_the_python_api(tmp_path, ct_file, capsys):
    geometry = _write_json(tmp_path / "geometry.json", GEOMETRY)
    before = _sha(ct_file)
    assert main(["pose", "--ct", str(ct_file), "--clinical", "20", "-10", "--source-to-isocenter", "500",
                 "--out", str(tmp_path / "pose.json")]) == 0
    volume = read_volume(ct_file)
    pose_json = json.loads((tmp_path / "pose.json").read_text())
    expected_pose = clinical_to_pose(20.0, -10.0, 500.0, volume.center)
    np.testing.assert_allclose(np.array(pose_json["camera_from_world"]), expected_pose.numpy(), atol=1e-12)
    np.testing.assert_allclose(pose_json["isocenter_ras_mm"], volume.center.numpy(), atol=1e-12)

    for renderer in ("siddon", "trilinear"):
        out = tmp_path / f"drr_{renderer}.npy"
        assert main(["render", "--ct", str(ct_file), "--geometry", str(geometry), "--pose", str(tmp_path / "pose.json"),
                     "--out", str(out), "--renderer", renderer, "--device", "cpu"]) == 0
        drr = np.load(out)
        detector = Detector(24, 30, 1000.0, (2.0, 1.5), (14.0, 12.5))
        want = render(volume, detector, expected_pose.float(), renderer)[0].numpy()
        assert drr.shape == (24, 30) and drr.dtype == np.float32
        np.testing.assert_allclose(drr, want, rtol=1e-5, atol=1e-6)
        assert drr.max() > 1.0
    assert _sha(ct_file) == before, "the input CT must not be modified"

    nrrd = tmp_path / "drr.nrrd"
    assert main(["render", "--ct", str(ct_file), "--geometry", str(geometry), "--pose", str(tmp_path / "pose.json"),
                 "--out", str(nrrd), "--device", "cpu"]) == 0
    image = sitk.ReadImage(str(nrrd))
    assert image.GetSpacing() == pytest.approx((1.5, 2.0))  # (column, row) spacing in ITK order
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), np.load(tmp_path / "drr_siddon.npy"), rtol=1e-6)
    assert "wrote" in capsys.readouterr().out


def test_demo_registers_the_phantom_and_writes_result_and_overlays(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    for name in result["files"]:
        assert (out / name).exists(), name
    target = np.array(result["target_camera_from_world"])
    start = np.array(result["start_camera_from_world"])
    # the start differs from the target by the documented perturbation about the CT centre (the RAS origin)
    motion = np.linalg.inv(target) @ start
    rx, ry, rz = np.deg2rad(DEMO_PERTURBATION[:3])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    np.testing.assert_allclose(motion[:3, :3], rot_z @ rot_x @ rot_y, atol=1e-12)
    np.testing.assert_allclose(motion[:3, 3], DEMO_PERTURBATION[3:], atol=1e-9)
    angle = np.degrees(np.arccos((np.trace(motion[:3, :3]) - 1) / 2))
    assert result["error_before"]["rotation_error_deg"] == pytest.approx(angle, abs=1e-6)
    assert result["registered"] is True
    assert result["error_before"]["mtre_mm"] > 10.0
    assert result["error_after"]["mtre_mm"] < 1.0
    assert result["error_after"]["rotation_error_deg"] < 0.5
    registered = np.array(json.loads((out / "registered_pose.json").read_text())["camera_from_world"])
    np.testing.assert_allclose(registered, result["registration"]["camera_from_world"])
    assert result["registration"]["converged"] is True
    assert result["image_metrics_after"]["ncc"] > result["image_metrics_before"]["ncc"]
    # pictures: overlay has the target in red and blue, the start in green
    overlay = np.asarray(Image.open(out / "overlay.png"))
    target_png = np.asarray(Image.open(out / "target.png"))
    assert overlay.shape == (200, 200, 3) and target_png.shape == (200, 200)
    np.testing.assert_array_equal(overlay[..., 0], target_png)
    np.testing.assert_array_equal(overlay[..., 2], target_png)
    assert np.asarray(Image.open(out / "before_after.png")).shape[:2] == (200, 404)
    fixed = np.load(out / "target.npy")
    assert fixed.shape == (200, 200) and fixed.min() >= 0 and fixed.max() > 1.0


# --------------------------------------------------------------------------
# diffreg register
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def register_case(tmp_path_factory):
    """X-ray (.npy DRR of the phantom at the demo target), geometry, start and truth pose files."""
    from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
    from DiffRegLogic.volume.phantoms import chest_phantom

    folder = tmp_path_factory.mktemp("register")
    volume = chest_phantom()
    target, start = demo_poses(volume.center.to(torch.float64))
    detector = Detector(**DEMO_DETECTOR)
    np.save(folder / "xray.npy", render(volume, detector, target)[0].numpy())
    _write_json(folder / "geometry.json", detector_to_dict(detector))
    _write_json(folder / "start.json", pose_to_dict(start))
    _write_json(folder / "truth.json", pose_to_dict(target))
    return folder


FAST_CLI = ["--levels", "4", "2", "--device", "cpu", "--quiet"]


def test_register_recovers_the_pose_and_writes_every_output(register_case, tmp_path, capsys):
    f = register_case
    out = tmp_path / "out" / "result.json"
    args = ["register", "--ct", "phantom", "--xray", str(f / "xray.npy"), "--geometry", str(f / "geometry.json"),
            "--init", str(f / "start.json"), "--truth", str(f / "truth.json"), "--out", str(out),
            "--overlay", str(tmp_path / "overlay.png"), "--curve", str(tmp_path / "curve.png"),
            "--drr", str(tmp_path / "drr.npy"), "--trace", *FAST_CLI]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["error_initial"]["mtre_mm"] > 10.0 and result["error"]["mtre_mm"] < 1.0
    pose = np.array(result["camera_from_world"])
    truth = np.array(json.loads((f / "truth.json").read_text())["camera_from_world"])
    assert np.degrees(np.arccos(np.clip((np.trace(pose[:3, :3].T @ truth[:3, :3]) - 1) / 2, -1, 1))) < 0.5
    assert result["converged"] is True and result["iterations"] == sum(result["iterations_per_level"])
    assert len(result["trace"]) == result["iterations"]
    assert result["image_metrics"]["ncc"] > result["image_metrics_initial"]["ncc"]
    assert result["image_metrics"]["ncc"] == pytest.approx(result["similarity"], abs=0.01)
    drr = np.load(tmp_path / "drr.npy")
    xray = np.load(f / "xray.npy")
    assert np.corrcoef(drr.ravel(), xray.ravel())[0, 1] > 0.999
    assert (tmp_path / "overlay.png").exists() and (tmp_path / "curve.png").exists()
    assert "converged" in capsys.readouterr().out


def test_register_from_a_dicom_xray_takes_geometry_and_start_from_its_tags(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from DiffRegLogic import geometry
    from DiffRegLogic.volume.phantoms import chest_phantom
    from DiffRegLogic.registration import perturb_pose

    volume = chest_phantom()
    center = volume.center.to(torch.float64)
    detector = Detector(rows=160, cols=160, sdd=1000.0, pixel_spacing=(3.0, 3.0))
    nominal = geometry.clinical_to_pose(10.0, -5.0, 600.0, center)  # what the C-arm reports
    motion = torch.tensor([[0.03, -0.02, 0.04, 6.0, -5.0, 4.0]], dtype=torch.float64)
    truth = perturb_pose(nominal, motion, center)[0]  # where the patient really is
    drr = render(volume, detector, truth)[0].numpy()
    pixels = np.round(drr / drr.max() * 60000).astype("<u2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # XA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "XA", 160, 160
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1000", "600"
    ds.ImagerPixelSpacing = ["3.0", "3.0"]
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = "10", "-5"
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(tmp_path / "xray.dcm"), enforce_file_format=True)
    _write_json(tmp_path / "truth.json", pose_to_dict(truth))
    out = tmp_path / "result.json"
    assert main(["register", "--ct", "phantom", "--xray", str(tmp_path / "xray.dcm"), "--truth",
                 str(tmp_path / "truth.json"), "--out", str(out), *FAST_CLI]) == 0
    result = json.loads(out.read_text())
    np.testing.assert_allclose(result["initial_camera_from_world"], nominal.numpy(), atol=1e-9)
    assert result["geometry"]["source_to_detector_mm"] == 1000.0
    assert result["error_initial"]["mtre_mm"] > 5.0 and result["error"]["mtre_mm"] < 1.0


@pytest.mark.parametrize("problem", ["size", "constant", "behind", "no_geometry", "out_suffix"])
def test_register_errors_exit_2_and_write_nothing(register_case, tmp_path, capsys, problem):
    f = register_case
    xray, geometry_json, init = f / "xray.npy", f / "geometry.json", f / "start.json"
    out = tmp_path / "result.json"
    expect = {"size": "but the detector is 100 x 100", "constant": "constant", "behind": "behind the X-ray source",
              "no_geometry": "no geometry", "out_suffix": "must be a .json"}[problem]
    extra = []
    if problem == "size":
        geometry_json = _write_json(tmp_path / "g.json", {**json.loads((f / "geometry.json").read_text()),
                                                          "rows": 100, "cols": 100})
    elif problem == "constant":
        xray = tmp_path / "flat.npy"
        np.save(xray, np.full((200, 200), 2.0, np.float32))
    elif problem == "behind":
        pose = np.array(json.loads(init.read_text())["camera_from_world"])
        flip = np.diag([1.0, -1.0, -1.0, 1.0])  # a half turn about the camera x axis: the CT ends up behind the source
        init = _write_json(tmp_path / "behind.json", {"camera_from_world": (flip @ pose).tolist()})
    elif problem == "no_geometry":
        geometry_json = None
    elif problem == "out_suffix":
        out = tmp_path / "result.txt"
    args = ["register", "--ct", "phantom", "--xray", str(xray), "--init", str(init), "--out", str(out),
            "--overlay", str(tmp_path / "overlay.png"), *FAST_CLI, *extra]
    if geometry_json is not None:
        args += ["--geometry", str(geometry_json)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expect in err, err
    assert not out.exists() and not (tmp_path / "overlay.png").exists()


@pytest.mark.parametrize("problem", ["missing_key", "bad_json", "missing_ct", "ct_2d", "bad_suffix", "not_rigid"])
def test_render_errors_exit_2_with_a_message(tmp_path, ct_file, capsys, problem):
    geometry = _write_json(tmp_path / "geometry.json", GEOMETRY)
    pose = _write_json(tmp_path / "pose.json", {"camera_from_world": np.eye(4).tolist()})
    ct, out = str(ct_file), tmp_path / "drr.npy"
    expect = {
        "missing_key": "missing 'rows'", "bad_json": "not valid JSON", "missing_ct": "not found",
        "ct_2d": "2D image", "bad_suffix": "unknown output type", "not_rigid": "is not rigid",
    }[problem]
    if problem == "missing_key":
        _write_json(geometry, {k: v for k, v in GEOMETRY.items() if k != "rows"})
    elif problem == "bad_json":
        geometry.write_text("{rows: 3")
    elif problem == "missing_ct":
        ct = str(tmp_path / "nothing.nii.gz")
    elif problem == "ct_2d":
        ct = str(tmp_path / "xray.nrrd")
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.float32)), ct)
    elif problem == "bad_suffix":
        out = tmp_path / "drr.jpg"
    elif problem == "not_rigid":
        scaled = np.eye(4)
        scaled[:3, :3] *= 2.0
        _write_json(pose, {"camera_from_world": scaled.tolist()})
    code = main(["render", "--ct", ct, "--geometry", str(geometry), "--pose", str(pose), "--out", str(out),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expect in err, err
    assert not out.exists()


def test_cuda_requested_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--out", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "d" / "result.json").exists()


def test_pose_needs_its_distances(tmp_path, capsys):
    assert main(["pose", "--clinical", "10", "0", "--out", str(tmp_path / "p.json")]) == 2
    assert "--source-to-isocenter" in capsys.readouterr().err
    assert main(["pose", "--spherical", "0", "0", "0", "0", "0", "0", "--out", str(tmp_path / "p.json")]) == 2
    assert "--sdd" in capsys.readouterr().err


# --------------------------------------------------------------------------
# regression tests: --crop errors, the reported renders, the experiment's start range, timings, fast start
# --------------------------------------------------------------------------


def _register_args(f, out, *extra):
    return ["register", "--ct", "phantom", "--xray", str(f / "xray.npy"), "--geometry", str(f / "geometry.json"),
            "--init", str(f / "start.json"), "--truth", str(f / "truth.json"), "--out", str(out), *extra]


@pytest.mark.parametrize("crop", [["--crop", "a,b,c,d"], ["--crop", "1,2,3"], ["--crop=-1,0,0,0"],
                                  ["--crop", "-1,0,0,0"], ["--crop", "1,2,3,4,5"], ["--crop", "1,2,3,\u00b2"]])
def test_register_bad_crop_is_one_error_line_and_status_2(register_case, tmp_path, capsys, crop):
    out = tmp_path / "result.json"
    assert main(_register_args(register_case, out, *crop, *FAST_CLI)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--crop" in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


def test_register_with_a_valid_crop_registers_the_cropped_detector(register_case, tmp_path):
    f = register_case
    out, drr_path = tmp_path / "result.json", tmp_path / "drr.npy"
    top, bottom, left, right = 3, 5, 2, 4
    assert main(_register_args(f, out, "--crop", f"{top},{bottom},{left},{right}", "--drr", str(drr_path),
                               *FAST_CLI)) == 0
    result = json.loads(out.read_text())
    assert result["xray_meta"]["crop"] == [top, bottom, left, right]
    geometry = result["geometry"]
    assert (geometry["rows"], geometry["cols"]) == (200 - top - bottom, 200 - left - right)
    # the full detector's principal point is its centre (99.5, 99.5); every kept pixel keeps its ray
    assert geometry["principal_point_px"] == pytest.approx([99.5 - left, 99.5 - top])
    assert result["error"]["mtre_mm"] < 1.0 < 10.0 < result["error_initial"]["mtre_mm"]
    full = json.loads((f / "geometry.json").read_text())
    detector = Detector(full["rows"], full["cols"], full["source_to_detector_mm"], tuple(full["pixel_spacing_mm"]))
    pose = torch.tensor(result["camera_from_world"], dtype=torch.float64)
    from DiffRegLogic.volume.phantoms import chest_phantom

    whole = render(chest_phantom(), detector, pose)[0].numpy()
    np.testing.assert_allclose(np.load(drr_path), whole[top:200 - bottom, left:200 - right], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trilinear_run(register_case, tmp_path_factory):
    """`register --renderer trilinear --step-voxels 0.5` (a short run: the pose it ends at is what matters)."""
    folder = tmp_path_factory.mktemp("trilinear")
    out, drr = folder / "result.json", folder / "drr.npy"
    args = _register_args(register_case, out, "--renderer", "trilinear", "--step-voxels", "0.5", "--drr", str(drr),
                          "--levels", "8", "--iterations", "5", "--device", "cpu", "--quiet")
    assert main(args) == 0
    return json.loads(out.read_text()), np.load(drr)


def test_register_reports_images_rendered_as_the_registration_rendered_them(register_case, trilinear_run):
    from DiffRegLogic.volume.phantoms import chest_phantom

    result, drr = trilinear_run
    assert result["options"]["renderer"] == "trilinear" and result["options"]["step_voxels"] == 0.5
    volume = chest_phantom()
    full = json.loads((register_case / "geometry.json").read_text())
    detector = Detector(full["rows"], full["cols"], full["source_to_detector_mm"], tuple(full["pixel_spacing_mm"]))
    pose = torch.tensor(result["camera_from_world"], dtype=torch.float64)
    half = render(volume, detector, pose, "trilinear", step_voxels=0.5)[0].numpy()
    unit = render(volume, detector, pose, "trilinear", step_voxels=1.0)[0].numpy()
    np.testing.assert_allclose(drr, half, rtol=1e-6, atol=1e-6)
    assert np.abs(half - unit).max() > 1e-3  # the two step lengths differ visibly: the check above tells them apart
    # the reported NCC is this DRR's: numpy's correlation inside the borders the X-ray reader found constant
    top, bottom, left, right = result["xray_meta"]["collimation"]
    inside = (slice(top, drr.shape[0] - bottom), slice(left, drr.shape[1] - right))
    xray = np.load(register_case / "xray.npy").astype(np.float64)
    ncc = np.corrcoef(drr.astype(np.float64)[inside].ravel(), xray[inside].ravel())[0, 1]
    assert result["image_metrics"]["ncc"] == pytest.approx(ncc, abs=1e-6)


def test_register_writes_its_wall_time_breakdown(trilinear_run):
    result, _ = trilinear_run
    timings = result["timings_s"]
    assert set(timings) == {"imports", "inputs", "kernels", "registration", "outputs"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in timings.values()), timings


def test_experiment_leaves_the_namespace_as_given_and_reports_its_default_range(tmp_path):
    from DiffRegLogic.cli import build_parser

    out = tmp_path / "robustness"
    args = build_parser().parse_args(["experiment", "robustness", "--out", str(out), "--n", "1", "--levels", "8",
                                      "--iterations", "2", "--batch", "1", "--optimizers", "adam", "--device", "cpu"])
    given = dict(vars(args))
    assert given["max_rot"] is None and given["max_trans"] is None
    args.check(args)
    assert args.func(args) == 0
    assert vars(args) == given
    md = (out / "robustness.md").read_text()
    # the robustness experiment's documented default: the seed paper's +-45 deg and +-60 mm
    assert "uniform in +-45 deg" in md and "translation component in +-60 mm" in md, md


@pytest.mark.parametrize("argv, expected", [
    (["experiment", "robustness", "--out", "o"], (45.0, 60.0)),
    (["experiment", "landscape", "--out", "o"], (45.0, 60.0)),
    (["experiment", "polychromatic", "--out", "o"], (10.0, 20.0)),
    (["experiment", "polychromatic", "--out", "o", "--max-rot", "3"], (3.0, 20.0)),
    (["experiment", "robustness", "--out", "o", "--max-rot", "5", "--max-trans", "0"], (5.0, 0.0)),
])
def test_experiment_start_range_is_the_users_else_the_experiments(argv, expected):
    from DiffRegLogic.cli import build_parser
    from DiffRegLogic.cli.experiment import start_range

    args = build_parser().parse_args(argv)
    given = dict(vars(args))
    assert start_range(args) == expected
    assert vars(args) == given


def test_help_and_argument_errors_import_no_heavy_library(tmp_path):
    """Building every command's parser, its help and its argument checks load none of the heavy libraries."""
    import subprocess
    import sys
    from pathlib import Path

    missing = tmp_path / "missing.nii"
    code = f"""
import contextlib, io, json, sys
from DiffRegLogic.cli import build_parser, main
parser = build_parser()
helps = []
for command in ("demo", "register", "render", "experiment", "pose"):
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            parser.parse_args([command, "--help"])
        except SystemExit:
            pass
    helps.append(text.getvalue())
codes = [
    main(["register", "--ct", {str(missing)!r}, "--xray", "x.npy", "--out", "r.json"]),
    main(["register", "--ct", "phantom", "--xray", "x.npy", "--out", "r.json", "--drr", "d.npy", "--crop", "1,2"]),
    main(["render", "--ct", "phantom", "--geometry", "g.json", "--pose", "p.json", "--out", "drr.jpg"]),
    main(["experiment", "polychromatic", "--out", "o", "--xray", "x.npy"]),
    main(["pose", "--clinical", "10", "0", "--out", "p.json"]),
    main(["register", "--ct", "phantom"]),
]
heavy = ("torch", "numba", "SimpleITK", "matplotlib", "vtk", "pydicom", "PIL", "numpy", "scipy")
print(json.dumps({{"codes": codes, "helps": [len(h) for h in helps],
                   "loaded": [m for m in heavy if m in sys.modules]}}))
"""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    assert report["codes"] == [2] * 6
    assert all(n > 200 for n in report["helps"]), report  # each command printed its help
    errors = run.stderr.splitlines()
    assert len(errors) == 6 and all(line.startswith("error: ") for line in errors), run.stderr
    assert "CT file or folder not found" in errors[0] and "--crop" in errors[1] and "unknown output type" in errors[2]


def test_a_program_run_leaves_the_collector_on_with_the_imports_frozen(tmp_path, monkeypatch, capsys):
    import gc
    import sys
    import types

    from DiffRegLogic.volume.phantoms import chest_phantom

    out = tmp_path / "pose.json"
    argv = ["diffreg", "pose", "--clinical", "20", "-10", "--source-to-isocenter", "500", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        monkeypatch.delitem(sys.modules, "triton", raising=False)  # an earlier test may have loaded it
        assert main() == 0  # argv from sys.argv: a program run
        assert gc.isenabled() and gc.get_freeze_count() > 0
        monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
        assert main() == 0  # with triton loaded, the exit unfreezes: its bindings would call frozen objects leaked
        assert gc.isenabled() and gc.get_freeze_count() == 0
        monkeypatch.delitem(sys.modules, "triton")
        monkeypatch.setattr(sys, "argv", ["diffreg", "pose", "--clinical", "1", "2", "--out", str(tmp_path / "p.json")])
        assert main() == 2  # an argument error before any import: the collector is on again all the same
        assert gc.isenabled()
        monkeypatch.setattr(sys, "argv", ["diffreg", "--version"])
        assert main() == 0 and gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
    assert "diffreg" in capsys.readouterr().out
    expected = clinical_to_pose(20.0, -10.0, 500.0, chest_phantom().center)
    np.testing.assert_allclose(json.loads(out.read_text())["camera_from_world"], expected.numpy(), atol=1e-12)


def test_python_dash_m_runs_the_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out, want = tmp_path / "pose.json", tmp_path / "want.json"
    spherical = ["pose", "--ct", "phantom", "--spherical", "10", "-5", "0", "0", "0", "0", "--sdd", "1020",
                 "--source-to-isocenter", "600"]
    run = subprocess.run([sys.executable, "-m", "DiffRegLogic.cli", *spherical, "--out", str(out)], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert main([*spherical, "--out", str(want)]) == 0
    assert json.loads(out.read_text()) == json.loads(want.read_text())
    bad = subprocess.run([sys.executable, "-m", "DiffRegLogic.cli", "pose", "--clinical", "10", "0", "--out",
                          str(tmp_path / "p.json")], cwd=root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
