"""``diffreg train --kind similarity`` and ``register --similarity learned``: the learned similarity from the command line.

One tiny similarity (32 px, 2 steps) is trained once per module through the
command line; the tests check the model it wrote against the engine's loader,
the registration's report against its own stages, and that bad input is
refused with status 2 and nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from DiffRegLogic.cli import main
from DiffRegLogic.drr.rendering import render
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.files import detector_to_dict, pose_to_dict, write_json
from DiffRegLogic.geometry.motions import perturb_pose
from DiffRegLogic.learning.poses import reference_view
from DiffRegLogic.learning.progress import parse_progress_line
from DiffRegLogic.learning.similarity_inference import load_similarity
from DiffRegLogic.volume.phantoms import chest_phantom

DETECTOR = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))
TINY = ["--steps", "2", "--image-size", "32", "--groups", "2", "--pool-pairs", "8", "--batch-size", "4",
        "--max-rot", "5", "--max-trans", "5", "--max-offset-rot", "10", "--max-offset-trans", "10", "--threads", "1"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("similarity_cli")
    geometry = folder / "geometry.json"
    write_json(geometry, detector_to_dict(DETECTOR))
    volume = chest_phantom()
    reference = reference_view(volume, DETECTOR, 600.0)
    write_json(folder / "reference.json", pose_to_dict(reference))
    center = volume.center.to(torch.float64)
    truth = perturb_pose(reference, torch.tensor([[0.03, -0.02, 0.02, 4.0, -3.0, 2.0]], dtype=torch.float64),
                         center)[0]
    start = perturb_pose(truth, torch.tensor([[0.05, 0.04, -0.03, 6.0, 5.0, -4.0]], dtype=torch.float64), center)[0]
    np.save(folder / "xray.npy", render(volume, DETECTOR, truth[None])[0].numpy())
    write_json(folder / "truth.json", pose_to_dict(truth))
    write_json(folder / "init.json", pose_to_dict(start))
    model = folder / "sim.pt"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["train", "--kind", "similarity", "--ct", "phantom", "--geometry", str(geometry),
                       "--reference-pose", str(folder / "reference.json"), "--out", str(model), "--progress", "json",
                       *TINY])
    assert status == 0
    return {"folder": folder, "geometry": geometry, "model": model, "volume": volume, "stdout": out.getvalue()}


def test_train_kind_similarity_writes_a_model_and_json_progress(case):
    records = [r for r in map(parse_progress_line, case["stdout"].splitlines()) if r is not None]
    assert records[0]["event"] == "start" and records[0]["kind"] == "similarity" and records[-1]["event"] == "done"
    validation = [r for r in records if r["event"] == "validation"][-1]
    similarity = load_similarity(case["model"], case["volume"], DETECTOR)
    assert similarity.info["validation"]["cosine"] == pytest.approx(validation["cosine"])
    assert similarity.info["embedding"] == "so4" and similarity.info["groups"] == 2
    assert similarity.info["image_size"] == 32 and similarity.info["step"] == 2


def _register(case, out, *extra):
    f = case["folder"]
    return main(["register", "--ct", "phantom", "--xray", str(f / "xray.npy"), "--geometry", str(case["geometry"]),
                 "--init", str(f / "init.json"), "--truth", str(f / "truth.json"), "--out", str(out),
                 "--intensity", "line_integral", "--levels", "4", "2", "--iterations", "4", "--quiet",
                 "--threads", "1", *extra])


def test_register_with_the_learned_similarity_reports_both_stages(case, tmp_path):
    out = tmp_path / "result.json"
    assert _register(case, out, "--similarity", "learned", "--similarity-model", str(case["model"])) == 0
    result = json.loads(out.read_text())
    learned = result["learned_similarity"]
    assert learned["polish"] == "zncc" and [s["similarity"] for s in learned["stages"]] == ["learned", "zncc"]
    np.testing.assert_allclose(result["camera_from_world"], learned["stages"][-1]["camera_from_world"], atol=1e-12)
    assert result["iterations"] == sum(s["iterations"] for s in learned["stages"])
    assert result["options"]["similarity"] == "learned"


@pytest.mark.parametrize("flags, message", [
    (["--similarity", "learned"], "needs --similarity-model"),
    (["--similarity", "learned", "--similarity-model", "missing.pt"], "similarity model file not found"),
    (["--similarity-model", "x.pt"], "only with --similarity learned"),
])
def test_register_refuses_bad_learned_settings_and_writes_nothing(case, tmp_path, capsys, flags, message):
    out = tmp_path / "result.json"
    assert _register(case, out, *[str(tmp_path / f) if f.endswith(".pt") else f for f in flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_register_refuses_a_pose_network_file_as_the_similarity(case, tmp_path, capsys):
    from DiffRegLogic.learning.checkpoint import FORMAT

    data = torch.load(case["model"], weights_only=True)
    data["format"] = FORMAT
    pose_file = tmp_path / "pose.pt"
    torch.save(data, pose_file)
    out = tmp_path / "result.json"
    assert _register(case, out, "--similarity", "learned", "--similarity-model", str(pose_file)) == 2
    assert "pose network, not a learned similarity" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--backbone", "small"], "option of the pose network"),
    (["--phantoms", "2", "--ct", "phantom"], "leave out --ct"),
    (["--image-size", "36"], "multiple of 8"),
    (["--max-offset-rot", "0"], "must both be above 0"),
])
def test_train_similarity_refuses_bad_settings(case, tmp_path, capsys, flags, message):
    out = tmp_path / "sim.pt"
    argv = ["train", "--kind", "similarity", "--geometry", str(case["geometry"]), "--out", str(out), "--steps", "1"]
    if "--ct" not in flags and "--phantoms" not in flags:
        argv += ["--ct", "phantom"]
    assert main(argv + flags) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_the_pose_network_refuses_similarity_options(case, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["train", "--ct", "phantom", "--geometry", str(case["geometry"]), "--out", str(out), "--steps", "1",
                 "--embedding", "se3"]) == 2
    assert "options of --kind similarity" in capsys.readouterr().err and not out.exists()
