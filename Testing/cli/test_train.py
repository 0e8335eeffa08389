"""``diffreg train``, ``register --model``, ``demo --auto``: the pose network from the command line, end to end.

One tiny model (small backbone, 32 px, a few steps) is trained once per
module through the command line; the tests check what the commands write
against independent recomputations (the network's own prediction on the
same image, the error functions on the written poses) and that bad input is
refused with status 2 and nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.cli import main
from DiffRegLogic.drr.rendering import render
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict, write_json
from DiffRegLogic.geometry.motions import perturb_pose
from DiffRegLogic.learning.inference import PoseNetworkInitializer
from DiffRegLogic.learning.poses import reference_view
from DiffRegLogic.learning.progress import parse_progress_line
from DiffRegLogic.volume.phantoms import chest_phantom

DETECTOR = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))
"""A coarse 64 x 64 detector with the demo's 600 mm field: the phantom fits, registrations take seconds."""
TINY = ["--steps", "3", "--image-size", "32", "--backbone", "small", "--pool-images", "32", "--batch-size", "8",
        "--max-rot", "10", "--max-trans", "10", "--threads", "1"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Geometry and reference-pose files, a tiny model trained by ``diffreg train``, its JSON progress lines."""
    folder = tmp_path_factory.mktemp("train")
    geometry = folder / "geometry.json"
    write_json(geometry, detector_to_dict(DETECTOR))
    volume = chest_phantom()
    reference = reference_view(volume, DETECTOR, 600.0)
    write_json(folder / "reference.json", pose_to_dict(reference))
    model = folder / "model.pt"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["train", "--ct", "phantom", "--geometry", str(geometry), "--reference-pose",
                       str(folder / "reference.json"), "--out", str(model), "--progress", "json", *TINY])
    assert status == 0
    return {"folder": folder, "geometry": geometry, "model": model, "volume": volume, "reference": reference,
            "stdout": out.getvalue()}


def test_train_writes_a_model_and_json_progress_lines(case):
    records = [parse_progress_line(line) for line in case["stdout"].splitlines()]
    records = [r for r in records if r is not None]
    events = [r["event"] for r in records]
    assert events[0] == "start" and events[-1] == "done"
    steps = [r["step"] for r in records if r["event"] == "progress"]
    assert steps and steps[-1] == 3 and steps == sorted(steps)
    network = PoseNetworkInitializer.from_file(case["model"], case["volume"], DETECTOR)
    torch.testing.assert_close(network.reference_pose, case["reference"].to(torch.float64), atol=1e-9, rtol=0)
    assert int(network.info.image_size) == 32


@pytest.fixture(scope="module")
def xray(case):
    """An X-ray file: the phantom's DRR 4 deg / 5 mm from the reference view, with its true pose."""
    volume, folder = case["volume"], case["folder"]
    truth = perturb_pose(case["reference"], torch.tensor([[0.04, -0.03, 0.05, 5.0, -3.0, 2.0]], dtype=torch.float64),
                         volume.center.to(torch.float64))[0]
    with torch.no_grad():
        image = render(volume, DETECTOR, truth)[0]
    np.save(folder / "xray.npy", image.numpy())
    write_json(folder / "truth.json", pose_to_dict(truth))
    return {"path": folder / "xray.npy", "truth": truth, "image": image}


def _register(case, xray, out, *extra):
    return main(["register", "--ct", "phantom", "--xray", str(xray["path"]), "--geometry", str(case["geometry"]),
                 "--model", str(case["model"]), "--truth", str(case["folder"] / "truth.json"), "--out", str(out),
                 "--intensity", "line_integral", "--levels", "2", "1", "--iterations", "30", "--quiet",
                 "--threads", "1", *extra])


def test_register_with_a_model_starts_from_the_network_and_reports_it(case, xray, tmp_path):
    out = tmp_path / "result.json"
    assert _register(case, xray, out) == 0
    result = json.loads(out.read_text())
    network = PoseNetworkInitializer.from_file(case["model"], case["volume"], DETECTOR)
    expected = network(xray["image"], DETECTOR, case["volume"])  # the same X-ray through the network, here
    np.testing.assert_allclose(result["network"]["camera_from_world"], expected[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result["initial_camera_from_world"], expected[0].numpy(), atol=1e-5)
    assert len(result["network"]["hypotheses"]) == 4
    points = evaluation.target_points(case["volume"], 2000)
    start_mtre = float(evaluation.mtre(torch.tensor(result["network"]["camera_from_world"]), xray["truth"], points))
    assert result["network"]["error"]["mtre_mm"] == pytest.approx(start_mtre, rel=1e-6)
    assert result["similarity"] >= result["initial_similarity"] - 1e-9  # the refinement never ends worse


@pytest.mark.parametrize("problem", ["missing", "corrupt", "with_init", "crop", "other_detector", "other_ct"])
def test_register_refuses_a_bad_model_and_writes_nothing(case, xray, tmp_path, capsys, problem):
    out = tmp_path / "result.json"
    extra = []
    args = ["register", "--ct", "phantom", "--xray", str(xray["path"]), "--geometry", str(case["geometry"]),
            "--model", str(case["model"]), "--out", str(out), "--intensity", "line_integral"]
    if problem == "missing":
        args[args.index("--model") + 1] = str(tmp_path / "nothing.pt")
    elif problem == "corrupt":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(case["model"].read_bytes()[:200])
        args[args.index("--model") + 1] = str(bad)
    elif problem == "with_init":
        extra = ["--init", str(case["folder"] / "truth.json")]
    elif problem == "crop":
        extra = ["--crop", "2,2,2,2"]
    elif problem == "other_detector":
        other = tmp_path / "other.json"
        write_json(other, detector_to_dict(Detector(rows=64, cols=64, sdd=1000.0, pixel_spacing=(9.375, 9.375))))
        args[args.index("--geometry") + 1] = str(other)
    elif problem == "other_ct":
        args += ["--mu-water", "0.03"]  # another HU -> mu conversion: another CT for the network
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--minutes", "0"], "--minutes"),
    (["--steps", "0"], "--steps"),
    (["--image-size", "48"], "multiple of 32"),
    (["--resume"], "does not exist"),
])
def test_train_refuses_bad_settings_and_writes_nothing(case, tmp_path, capsys, flags, message):
    out = tmp_path / "m.pt"
    assert main(["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not out.exists()


def test_resume_at_another_image_size_is_refused(case, tmp_path, capsys):
    model = tmp_path / "m.pt"
    model.write_bytes(case["model"].read_bytes())
    before = model.read_bytes()
    flags = [f if f != "32" else "64" for f in TINY]
    assert main(["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--reference-pose",
                 str(case["folder"] / "reference.json"), "--out", str(model), "--resume", *flags]) == 2
    assert "error: " in capsys.readouterr().err
    assert model.read_bytes() == before  # the checkpoint is left as it was


def test_resume_continues_an_interrupted_run(case, tmp_path):
    from DiffRegLogic.cli.train import train_config
    from DiffRegLogic.learning.checkpoint import load_pose_network
    from DiffRegLogic.learning.trainer import train
    from DiffRegLogic.cli.app import build_parser

    model = tmp_path / "m.pt"
    flags = [f if f != "3" else "6" for f in TINY]
    argv = ["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--reference-pose",
            str(case["folder"] / "reference.json"), "--out", str(model), "--progress", "none", *flags]
    from dataclasses import replace

    config = replace(train_config(build_parser().parse_args(argv)), log_every=1)

    def stop_at_step_2(record):
        if record.get("event") == "progress" and record.get("step") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # what Ctrl-C does to a run: the checkpoint of step 2 stays
        train(case["volume"], DETECTOR, case["reference"], config, checkpoint_path=model, progress=stop_at_step_2,
              bar=False)
    _, info = load_pose_network(model, case["volume"], DETECTOR)
    assert int(info.step) == 2 and not info.complete
    assert main(argv + ["--resume"]) == 0  # the command line's config (log_every is not a training setting)
    _, info = load_pose_network(model, case["volume"], DETECTOR)
    assert int(info.step) == 6 and info.complete


def test_demo_auto_trains_then_registers_from_the_network(tmp_path):
    from DiffRegLogic.cli.demo import AUTO_FILES
    from DiffRegLogic.experiments.demo import demo_detector

    out = tmp_path / "demo"
    assert main(["demo", "--auto", "--train-minutes", "0.05", "--out", str(out), "--levels", "4", "2",
                 "--iterations", "20", "--quiet", "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(AUTO_FILES)
    result = json.loads((out / "result.json").read_text())
    network = PoseNetworkInitializer.from_file(out / "model.pt", chest_phantom(), demo_detector())
    target = torch.from_numpy(np.load(out / "target.npy"))
    expected = network(target, demo_detector(), None)[0]  # the saved model on the saved X-ray, here
    np.testing.assert_allclose(result["start_camera_from_world"], expected.numpy(), atol=1e-4)
    assert result["network"]["hypotheses"] == 4 and result["registration"]["initial_camera_from_world"]


def test_the_reference_view_can_come_from_a_dicom_x_rays_c_arm_angles(case, tmp_path, capsys):
    from Testing.references import write_dicom

    tags = dict(DistanceSourceToDetector="1020", ImagerPixelSpacing=["9.375", "9.375"],
                DistanceSourceToPatient="600", PositionerPrimaryAngle="20", PositionerSecondaryAngle="-10")
    dicom = write_dicom(tmp_path / "view.dcm", np.arange(64 * 64).reshape(64, 64) % 700 + 100, **tags)
    model = tmp_path / "model.pt"
    assert main(["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--reference-xray", str(dicom),
                 "--out", str(model), "--progress", "none", *TINY]) == 0
    # the independent path: diffreg pose from the same angles about the CT centre
    assert main(["pose", "--ct", "phantom", "--clinical", "20", "-10", "--source-to-isocenter", "600",
                 "--out", str(tmp_path / "pose.json")]) == 0
    from DiffRegLogic.geometry.files import read_pose

    expected = read_pose(tmp_path / "pose.json").reshape(4, 4)
    network = PoseNetworkInitializer.from_file(model, case["volume"], DETECTOR)
    torch.testing.assert_close(network.reference_pose, expected, atol=1e-9, rtol=0)
    capsys.readouterr()
    refused = tmp_path / "refused.pt"
    no_angles = write_dicom(tmp_path / "plain.dcm", np.arange(64 * 64).reshape(64, 64) % 700 + 100, DistanceSourceToDetector="1020")
    for extra, message in ((["--reference-xray", str(dicom), "--reference-pose", str(case["folder"] / "reference.json")],
                            "keep one"),
                           (["--reference-xray", str(dicom), "--source-to-isocenter", "500"], "keep one"),
                           (["--reference-xray", str(tmp_path / "none.dcm")], "not found"),
                           (["--reference-xray", str(no_angles)], "lacks the DICOM tags")):
        assert main(["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--out", str(refused),
                     *extra, *TINY]) == 2
        assert message in capsys.readouterr().err
        assert not refused.exists()
