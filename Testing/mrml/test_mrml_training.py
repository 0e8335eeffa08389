"""The panel's "Train pose network" bridge against real MRML (slicer-core): inputs as files, argv, progress, process.

Independent truths: the engine's own readers (`volume.io.read_volume`,
`geometry.files.read_geometry` / `read_pose`) for the exported files, the
CT node's voxels and a matrix product computed here for their geometry,
`clinical_to_pose` for the reference view, hand-written JSON lines (the
format `learning.progress` documents) for the monitor, and a real
``diffreg train`` process for the end-to-end run.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import slicer
import torch

from DiffRegLogic import mrml
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import clinical_to_pose
from DiffRegLogic.geometry.files import detector_to_dict, read_geometry, read_pose
from DiffRegLogic.mrml import settings, training
from DiffRegLogic.volume.io import read_ct_array, read_volume

from references import oblique_affine
from test_mrml import DISTANCE, ROWS, SDD, SPACING, base_setup, ct_node, scene, simulated_case, xray_node  # noqa: F401 (scene: the fixture)

PRIMARY, SECONDARY = 20.0, -10.0


def _setup(ct, xr, model, **kw) -> settings.Setup:
    return base_setup(ct, xr, primaryAngle=PRIMARY, secondaryAngle=SECONDARY, trainingModelPath=pathlib.Path(model),
                      **kw)


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def test_training_command_is_the_exact_argv(tmp_path):
    setup = settings.Setup(trainingMinutes=2.5, trainingImageSize=64, trainingMaxRotation=25.5,
                           trainingMaxTranslation=40.0, trainingBackbone="small", trainingDevice="cpu",
                           trainingModelPath=tmp_path / "model.pt")
    ct, geometry, pose, model = (str(tmp_path / n) for n in ("ct.nrrd", "g.json", "p.json", "model.pt"))
    assert training.training_command("/opt/PythonSlicer", ct, geometry, setup.trainingModelPath, setup, pose) == [
        "/opt/PythonSlicer", "-u", "-m", "DiffRegLogic.cli", "train", "--ct", ct, "--geometry", geometry,
        "--reference-pose", pose, "--out", model, "--max-rot", "25.5", "--max-trans", "40", "--minutes", "2.5",
        "--image-size", "64", "--backbone", "small", "--device", "cpu", "--progress", "json"]
    # the panel's defaults (10 min, 128 px, +-30 deg / +-40 mm, EfficientNet-b0, auto); steps instead of minutes
    defaults = settings.Setup(trainingModelPath=tmp_path / "model.pt")
    assert training.training_command("py", ct, geometry, model, defaults, steps=2, extra_args=["--seed", 3]) == [
        "py", "-u", "-m", "DiffRegLogic.cli", "train", "--ct", ct, "--geometry", geometry, "--out", model,
        "--max-rot", "30", "--max-trans", "40", "--steps", "2", "--image-size", "128", "--backbone",
        "efficientnet-b0", "--device", "auto", "--progress", "json", "--seed", "3"]
    # relative paths become absolute: the process runs in the engine's folder
    relative = training.training_command("py", "ct.nrrd", "g.json", "m.pt", defaults)
    assert relative[relative.index("--ct") + 1] == str(pathlib.Path("ct.nrrd").absolute())
    assert pathlib.Path(training.engine_root(), "DiffRegLogic", "cli", "__main__.py").is_file()


@pytest.mark.parametrize("field, value, message", [
    ("trainingMinutes", 0.0, r"Training time \(trainingMinutes\) must be > 0"),
    ("trainingMinutes", float("nan"), "trainingMinutes"),
    ("trainingImageSize", 100, "multiple of 32"),
    ("trainingImageSize", 16, r"Image size \(trainingImageSize\)"),
    ("trainingMaxRotation", 200.0, r"<= 180 deg"),
    ("trainingMaxTranslation", -1.0, "trainingMaxTranslation"),
    ("trainingBackbone", "resnet", "trainingBackbone is 'resnet'"),
    ("trainingModelPath", pathlib.Path(), "choose where to save the model"),
    ("trainingModelPath", "model.txt", "end the name with .pt"),
    ("trainingModelPath", "/no/such/folder/model.pt", "does not exist"),
])
def test_training_fields_are_checked(tmp_path, field, value, message):
    setup = settings.Setup(trainingModelPath=tmp_path / "m.pt")
    training.check_training_fields(setup)  # the defaults pass
    setattr(setup, field, pathlib.Path(value) if field == "trainingModelPath" else value)
    with pytest.raises(InputError, match=message):
        training.training_command("py", "ct.nrrd", "g.json", "m.pt", setup)


def test_training_module_imports_without_torch_or_vtk():
    code = ("import sys; from DiffRegLogic.mrml import training; m = training.TrainingMonitor(); "
            "m.feed('{\"event\": \"done\", \"step\": 1}\\n'); assert m.finish(0) == 'done'; "
            "assert 'torch' not in sys.modules and 'vtk' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=training.engine_root())


# --------------------------------------------------------------------------
# The inputs as files
# --------------------------------------------------------------------------


def _snapshot(node):
    return (slicer.util.arrayFromVolume(node).copy(), mrml.ijk_to_ras(node), node.GetTransformNodeID(),
            node.GetStorageNodeID(), node.GetMTime())


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_exported_inputs_read_back_as_the_nodes(scene, tmp_path, dtype):
    affine = oblique_affine().numpy()
    ct, hu = ct_node(scene, affine)
    if dtype is np.int16:  # a CT as DICOM stores it: the file keeps the type
        slicer.util.updateVolumeFromArray(ct, np.rint(hu).astype(np.int16))
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = clinical_to_pose(30.0, 15.0, 100.0).numpy()
    moved[:3, 3] = (12.0, -7.0, 30.0)
    mrml.set_transform_matrix(parent, moved)
    ct.SetAndObserveTransformNodeID(parent.GetID())
    xr = xray_node(scene, np.random.default_rng(0).random((ROWS, 64)))
    setup = _setup(ct, xr, tmp_path / "model.pt")
    before = [_snapshot(ct), _snapshot(xr)]

    files = training.export_training_inputs(setup, tmp_path / "run")

    for node, old in zip((ct, xr), before):  # nodes only read: voxels, geometry, parent, storage, modified time
        for now, then in zip(_snapshot(node), old):
            assert np.array_equal(now, then) if isinstance(now, np.ndarray) else now == then
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ct.nrrd", "geometry.json", "reference_pose.json"]
    values, file_affine = read_ct_array(files.ct)
    np.testing.assert_array_equal(values, slicer.util.arrayFromVolume(ct).astype(np.float32))
    np.testing.assert_allclose(file_affine, moved @ affine, atol=1e-9)  # the parent transform is in the file
    node_volume, file_volume = mrml.volume_from_node(ct), read_volume(files.ct)
    assert torch.equal(file_volume.mu, node_volume.mu)
    from DiffRegLogic.learning.checkpoint import fingerprint_volume

    assert fingerprint_volume(file_volume) == fingerprint_volume(node_volume)  # the model will accept the node
    assert detector_to_dict(read_geometry(files.geometry)) == {
        "source_to_detector_mm": SDD, "rows": ROWS, "cols": 64, "pixel_spacing_mm": [SPACING, SPACING]}
    expected = clinical_to_pose(PRIMARY, SECONDARY, DISTANCE, node_volume.center.double())
    np.testing.assert_allclose(read_pose(files.reference_pose).numpy(), expected.numpy(), rtol=0, atol=1e-9)


def test_reference_view_follows_the_initial_pose_mode(scene, tmp_path):
    ct, _ = ct_node(scene)
    xr = xray_node(scene, np.random.default_rng(1).random((ROWS, 64)))
    start = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    pose = clinical_to_pose(-35.0, 12.0, 650.0, torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64))
    mrml.set_transform_matrix(start, torch.linalg.inv(pose).numpy())  # "C-arm in patient": world_from_camera
    setup = _setup(ct, xr, tmp_path / "m.pt", initialPoseMode=settings.POSE_FROM_TRANSFORM, initialTransform=start)
    files = training.export_training_inputs(setup, tmp_path / "a")
    np.testing.assert_allclose(read_pose(files.reference_pose).numpy(), pose.numpy(), rtol=0, atol=1e-9)
    # the network start itself: its reference view is the C-arm angles of the section
    setup.initialPoseMode = settings.POSE_FROM_NETWORK
    files = training.export_training_inputs(setup, tmp_path / "b")
    center = mrml.volume_from_node(ct).center.double()
    np.testing.assert_allclose(read_pose(files.reference_pose).numpy(),
                               clinical_to_pose(PRIMARY, SECONDARY, DISTANCE, center).numpy(), rtol=0, atol=1e-9)


def test_export_refuses_a_setup_without_x_ray_and_writes_nothing(scene, tmp_path):
    ct, _ = ct_node(scene)
    with pytest.raises(InputError, match="select the input X-ray"):
        training.export_training_inputs(_setup(ct, None, tmp_path / "m.pt"), tmp_path / "run")
    xr = xray_node(scene, np.random.default_rng(1).random((ROWS, 64)))
    with pytest.raises(InputError, match="source-to-detector distance is missing"):
        training.export_training_inputs(_setup(ct, xr, tmp_path / "m.pt", sdd=0.0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# The monitor: a recorded output
# --------------------------------------------------------------------------

RECORDED = [
    "training a pose network on cpu\n",
    '{"event": "start", "steps": 100, "minutes": null, "image_size": 32, "batch_size": 4, "device": "cpu"}\n',
    "  0%|          | 0/100 [00:00<?, ?it/s]\r 10%|#         | 10/100 [00:01<00:09]\r",
    '{"event": "progress", "step": 40, "steps": 100, "fraction": 0.4, "elapsed_s": 20.0, "eta_s": 30.0, ',
    '"loss": 2.5, "val_mtre_mm": null}\n',
    '{"event": "validation", "step": 50, "mtre_mm_median": 12.25}\r\n',
    '{"event": "checkpoint", "step": 50, "path": "/data/m.pt"}\n',
    '\r{"event": "progress", "step": 60, "steps": 100, "fraction": 0.6, "elapsed_s": 30.0, "eta_s": 20.0, '
    '"loss": 1.75, "val_mtre_mm": 12.25}\n',
]


def test_monitor_reads_a_recorded_run():
    monitor = training.TrainingMonitor("/data/m.pt")
    assert monitor.state == training.IDLE and monitor.status().startswith("Starting")
    monitor.feed(RECORDED[0])
    assert monitor.state == training.IDLE and monitor.lines[-1] == "training a pose network on cpu"
    assert [r["event"] for r in monitor.feed(RECORDED[1])] == ["start"] and monitor.state == training.RUNNING
    monitor.feed(RECORDED[2])  # tqdm redraws: text, not records
    assert monitor.records[-1]["event"] == "start" and "10/100" in monitor.lines[-1]
    assert monitor.feed(RECORDED[3]) == [] and monitor.latest is None  # half a line: nothing yet
    (record,) = monitor.feed(RECORDED[4])
    assert record["step"] == 40 and monitor.fraction == 0.4 and monitor.latest is record
    assert "step 40/100" in monitor.status() and "loss 2.5" in monitor.status() and "ETA 0:30" in monitor.status()
    for chunk in RECORDED[5:]:
        monitor.feed(chunk)
    assert monitor.validation["mtre_mm_median"] == 12.25 and monitor.checkpoint["path"] == "/data/m.pt"
    assert monitor.fraction == 0.6 and [r["event"] for r in monitor.records] == [
        "start", "progress", "validation", "checkpoint", "progress"]
    status = monitor.status()
    assert "step 60/100" in status and "val mTRE 12.2 mm" in status and "ETA 0:20" in status
    monitor.feed('{"event": "done", "step": 100, "elapsed_s": 50.0, "mtre_mm_median": 9.5, "path": "/data/m.pt"}')
    assert monitor.done is None  # unterminated: the process may still be writing it
    assert monitor.finish(0) == training.DONE and monitor.fraction == 1.0
    assert monitor.saved_path() == "/data/m.pt" and "9.50 mm" in monitor.status() and "/data/m.pt" in monitor.status()


def test_monitor_failure_and_cancel():
    failed = training.TrainingMonitor()
    failed.feed(RECORDED[1] + "Traceback (most recent call last):\nerror: the CT file is not readable: x.nrrd\n")
    assert failed.finish(2) == training.FAILED and failed.error == "the CT file is not readable: x.nrrd"
    assert failed.status() == "Training failed: the CT file is not readable: x.nrrd" and failed.saved_path() is None
    argparse_error = training.TrainingMonitor()
    argparse_error.feed("usage: diffreg train ...\ndiffreg train: error: argument --backbone: invalid choice\n")
    assert argparse_error.finish(2) == training.FAILED and argparse_error.error.startswith("argument --backbone")
    crashed = training.TrainingMonitor()
    crashed.feed("Segmentation fault")
    assert crashed.finish(-11) == training.FAILED
    assert crashed.error == "the training process ended with exit status -11: Segmentation fault"
    silent = training.TrainingMonitor()
    silent.feed(RECORDED[1])
    assert silent.finish(0) == training.FAILED and "without finishing" in silent.error
    # cancelled after a checkpoint: SIGTERM, the command's "interrupted" line and exit 143
    stopped = training.TrainingMonitor("/data/m.pt")
    for chunk in RECORDED:
        stopped.feed(chunk)
    stopped.request_cancel()
    assert "Stopping" in stopped.status()
    stopped.feed("error: interrupted\n")
    assert stopped.finish(143) == training.CANCELLED and stopped.fraction == 0.6
    assert "step 50" in stopped.status() and "/data/m.pt" in stopped.status()
    assert stopped.saved_path() == "/data/m.pt"
    early = training.TrainingMonitor()
    early.request_cancel()
    assert early.finish(-9) == training.CANCELLED and early.saved_path() is None and "no model" in early.status()


# --------------------------------------------------------------------------
# The process: cancel, then kill after the grace period
# --------------------------------------------------------------------------

CHILD = """
import signal, sys
def stop(signum, frame):
    print('{"event": "checkpoint", "step": 7, "path": "m.pt"}', flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop if sys.argv[1] == "checkpoint" else signal.SIG_IGN)
print('{"event": "progress", "step": 7, "steps": 10, "fraction": 0.7}', flush=True)
sys.stdin.read()  # blocks until the process is ended
"""


def _child(mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handlers are POSIX")
def test_cancel_terminates_and_the_process_keeps_its_checkpoint():
    cleaned = []
    run = training.TrainingRun(_child("checkpoint"), cleanup=lambda: cleaned.append(True))
    while run.monitor.latest is None:
        assert not run.poll(wait_s=30.0)
    assert run.monitor.fraction == 0.7 and not cleaned
    run.cancel()
    assert run.wait(timeout=30) == training.CANCELLED and run.monitor.return_code == 143
    assert run.monitor.checkpoint["path"] == "m.pt" and cleaned == [True]
    assert run.poll() and cleaned == [True]  # settled once


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handlers are POSIX")
def test_a_process_that_ignores_terminate_is_killed_after_the_grace_period():
    now = [100.0]
    process = _child("ignore")
    run = training.TrainingRun(process, grace_s=30.0, clock=lambda: now[0])
    while run.monitor.latest is None:
        assert not run.poll(wait_s=30.0)
    run.cancel()
    now[0] += 29.0
    assert not run.poll() and process.poll() is None  # still within the grace period: not killed
    now[0] += 1.0
    run.poll()  # the grace period is over: killed
    assert run.wait(timeout=30) == training.CANCELLED and run.monitor.return_code == -signal.SIGKILL


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handlers are POSIX")
@pytest.mark.parametrize("mode, code", [("checkpoint", 143), ("ignore", -signal.SIGKILL)])
def test_shutdown_ends_the_process_and_removes_the_exported_inputs(tmp_path, mode, code):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "ct.nrrd").write_bytes(b"patient data")
    import shutil

    run = training.TrainingRun(_child(mode), cleanup=lambda: shutil.rmtree(folder))
    while run.monitor.latest is None:
        assert not run.poll(wait_s=30.0)
    assert run.shutdown(timeout_s=2.0) == training.CANCELLED  # what closing the module does
    assert run.monitor.return_code == code and run.process.poll() is not None
    assert not folder.exists()


# --------------------------------------------------------------------------
# One tiny real run of `diffreg train`, then the network as the start of a registration
# --------------------------------------------------------------------------


def test_tiny_training_run_then_the_network_starts_the_registration(scene, tmp_path):
    ct, xr, truth, volume, detector = simulated_case(scene, PRIMARY, SECONDARY)
    model = tmp_path / "model.pt"
    setup = _setup(ct, xr, model, trainingImageSize=32, trainingBackbone="small", trainingDevice="cpu")
    files = training.export_training_inputs(setup, tmp_path / "run")
    command = training.training_command(sys.executable, files.ct, files.geometry, model, setup, files.reference_pose,
                                        steps=2, extra_args=["--batch-size", "4", "--pool-images", "8"])
    process = subprocess.Popen(command, cwd=training.engine_root(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    run = training.TrainingRun(process, training.TrainingMonitor(model))
    state = run.wait(timeout=600)
    assert state == training.DONE, (run.monitor.error, list(run.monitor.lines))
    assert run.monitor.fraction == 1.0 and run.monitor.done["step"] == 2 and model.is_file()
    assert run.monitor.saved_path() == str(model) and [r["event"] for r in run.monitor.records][0] == "start"

    # the start mode "pose network (model file)": the model accepts the node's CT and the X-ray's detector
    setup.initialPoseMode, setup.poseModelPath = settings.POSE_FROM_NETWORK, model
    inputs = mrml.read_inputs(setup)
    assert inputs.starts.shape == (4, 4, 4) and torch.equal(inputs.pose, inputs.starts[0])
    assert inputs.start_note.startswith("start from the pose network (4 hypotheses")
    setup.levels, setup.iterations = "4", 2
    done = mrml.run_registration(scene, setup)
    assert done.notes[0].startswith("start from the pose network") and "pose network" in done.message
    # a model file that is not there: a clear error before any output
    setup.poseModelPath = tmp_path / "missing.pt"
    with pytest.raises(InputError, match="does not exist"):
        mrml.read_inputs(setup)
    setup.poseModelPath = pathlib.Path()
    with pytest.raises(InputError, match="no pose network selected"):
        mrml.read_inputs(setup)
