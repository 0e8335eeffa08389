"""`experiments.network_realism` and ``diffreg experiment network-realism``: a trained pose network on simulated X-rays.

A tiny model (3 steps, ±5° / ±5 mm) stands in for a trained one: its poses
stay near the reference view, within the registration's capture range, so a
clean X-ray must register. The network's errors are checked against the
network called directly on an independently rendered DRR, the test poses
against the ablation's held-out poses, the tables against their rows.
"""

from __future__ import annotations

import csv
import hashlib
import statistics

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.cli import main
from DiffRegLogic.drr.rendering import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments import network_realism
from DiffRegLogic.experiments.ablation_study import test_cases as ablation_test_cases
from DiffRegLogic.experiments.common import TEST_SEED_OFFSET
from DiffRegLogic.experiments.network_realism_study import NETWORK_REALISM_COLUMNS, held_out_poses
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.files import detector_to_dict, write_json
from DiffRegLogic.learning.inference import PoseNetworkInitializer
from DiffRegLogic.learning.networks import PoseNetConfig
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.trainer import TrainConfig, train
from DiffRegLogic.volume.phantoms import chest_phantom

DETECTOR = Detector(rows=48, cols=48, sdd=1020.0, pixel_spacing=(12.5, 12.5))
REFINE = {"levels": (2.0, 1.0), "max_iterations": 40}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    volume = chest_phantom()
    reference = reference_view(volume, DETECTOR, 600.0)
    config = TrainConfig(network=PoseNetConfig(image_size=32, backbone="small", max_translation_mm=(5.0,) * 3),
                         pose_range=PoseRange((5.0,) * 3, (5.0,) * 3), steps=3, batch_size=4, pool_images=8,
                         validation_images=4, target_points=100, seed=0)
    folder = tmp_path_factory.mktemp("network_realism")
    path = folder / "model.pt"
    train(volume, DETECTOR, reference, config, checkpoint_path=path, bar=False)
    geometry = folder / "geometry.json"
    write_json(geometry, detector_to_dict(DETECTOR))
    network = PoseNetworkInitializer.from_file(path, volume, DETECTOR, hypotheses=2)
    return {"volume": volume, "reference": reference, "config": config, "path": path, "network": network,
            "geometry": geometry}


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_test_poses_are_the_ablations_held_out_poses(case):
    _, expected = ablation_test_cases(case["volume"], DETECTOR, case["reference"], case["config"].pose_range, 3,
                                      4 + TEST_SEED_OFFSET)
    assert torch.allclose(held_out_poses(case["network"], 3, 4), expected, atol=1e-9)
    wider = held_out_poses(case["network"], 3, 4, PoseRange((20.0,) * 3, (20.0,) * 3))
    assert not torch.allclose(wider, expected, atol=1e-3)


def test_clean_x_rays_give_the_networks_own_errors_and_register(case, tmp_path):
    volume, network = case["volume"], case["network"]
    report = network_realism(volume, DETECTOR, network, tmp_path, presets=("clean",), variants=("zncc",), n=2,
                             seed=1, options=REFINE, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network_realism.csv", "network_realism.md",
                                                          "network_realism.png"]
    rows = _rows(tmp_path / "network_realism.csv")
    assert list(rows[0]) == list(NETWORK_REALISM_COLUMNS)
    truths = held_out_poses(network, 2, 1)
    points = evaluation.target_points(volume, 1000, seed=1).to(torch.float64)
    with torch.no_grad():  # the same poses rendered here, fed to the network directly
        images = render(volume, DETECTOR, truths.to(torch.float32))
    direct = evaluation.mtre(network.predict(images), truths, points).tolist()
    assert [float(r["network_mtre_mm"]) for r in rows] == pytest.approx(direct, rel=1e-3, abs=1e-3)
    final = [float(r["final_mtre_mm"]) for r in rows]
    assert all(f < 2.0 for f in final) and all(f < d for f, d in zip(final, direct))
    assert [r["success"] for r in rows] == ["True", "True"]
    summary = report["summary"]["clean"]["zncc"]
    assert summary["success_rate"] == 1.0
    assert summary["network_median_mtre_mm"] == pytest.approx(statistics.median(direct), rel=1e-3)
    assert summary["median_final_mtre_mm"] == pytest.approx(statistics.median(final), rel=1e-3)
    assert "| clean |" in (tmp_path / "network_realism.md").read_text()


def test_a_raw_x_ray_is_detected_as_register_model_does_and_each_case_has_its_own_noise(case, tmp_path,
                                                                                       monkeypatch):
    from DiffRegLogic.experiments import network_realism_study

    seeds, simulate = [], network_realism_study.simulate_xray

    def recording(*args, **kwargs):
        seeds.append((args[4].seed, args[4].realism.photons_per_pixel))
        return simulate(*args, **kwargs)

    monkeypatch.setattr(network_realism_study, "simulate_xray", recording)
    report = network_realism(case["volume"], DETECTOR, case["network"], tmp_path, presets=("raw", "noise"),
                             variants={"plain": {}}, n=2, seed=0, options=REFINE, convention="detect", log=None)
    rows = _rows(tmp_path / "network_realism.csv")
    assert [(r["preset"], r["case"]) for r in rows] == [("raw", "0"), ("raw", "1"), ("noise", "0"), ("noise", "1")]
    assert {r["convention"] for r in rows if r["preset"] == "raw"} == {"intensity"}
    assert report["summary"]["raw"]["plain"]["success_rate"] == 1.0  # the raw image, once converted, registers
    # each case its own seed of the noise and instruments (seed + case), the preset's own degradation
    assert seeds == [(0, None), (1, None), (0, 1e3), (1, 1e3)]
    raw = [float(r["network_mtre_mm"]) for r in rows if r["preset"] == "raw"]
    noisy = [float(r["network_mtre_mm"]) for r in rows if r["preset"] == "noise"]
    assert raw != pytest.approx(noisy, abs=1e-6)  # same poses: the noise changed what the network saw


def test_bad_arguments_are_refused(case, tmp_path):
    volume, network = case["volume"], case["network"]
    with pytest.raises(InputError, match="unknown preset|choose from"):
        network_realism(volume, DETECTOR, network, tmp_path, presets=("fog",), log=None)
    with pytest.raises(InputError, match="unknown registration variant"):
        network_realism(volume, DETECTOR, network, tmp_path, presets=("clean",), variants=("best",), log=None)
    with pytest.raises(InputError, match="convention"):
        network_realism(volume, DETECTOR, network, tmp_path, presets=("clean",), convention="guess", log=None)
    assert not any(tmp_path.iterdir())


def test_the_command_line_runs_it_and_refuses_what_it_cannot_use(case, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["experiment", "network-realism", "--ct", "phantom", "--geometry", str(case["geometry"]),
            "--model", str(case["path"]), "--presets", "clean", "--n", "1", "--levels", "2", "1",
            "--iterations", "30", "--hypotheses", "1", "--threads", "1"]
    assert main(base + ["--out", str(out)]) == 0
    rows = _rows(out / "network_realism.csv")
    assert len(rows) == 1 and float(rows[0]["final_mtre_mm"]) < 2.0
    capsys.readouterr()
    for extra, message in ((["--model", str(tmp_path / "none.pt")], "does not exist"),
                           (["--xray", str(case["geometry"])], "drop --xray"),
                           (["--max-rot", "0"], "above 0"),
                           (["--source-to-isocenter", "500"], "reference view is fixed"),
                           (["--train-steps", "5"], "trained already"),
                           (["--optimizers", "lm"], "not an option of network-realism"),
                           (["--detector-pixels", "20"], "--detector-pixels is for the realism")):
        assert main(base + extra + ["--out", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
    assert main(["experiment", "network-realism", "--ct", "phantom", "--out", str(tmp_path / "r")]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main(["experiment", "robustness", "--model", str(case["path"]), "--out", str(tmp_path / "r")]) == 2
    assert "--model is for the network-realism" in capsys.readouterr().err
    other = tmp_path / "other.json"  # a model is used only with the detector it was trained for
    write_json(other, detector_to_dict(Detector(rows=48, cols=48, sdd=1000.0, pixel_spacing=(12.5, 12.5))))
    assert main(base[:5] + [str(other)] + base[6:] + ["--out", str(tmp_path / "r")]) == 2
    assert "detector" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists() and not (tmp_path / "r").exists()
    before = hashlib.sha256(case["path"].read_bytes()).hexdigest()
    assert main(base + ["--out", str(case["path"])]) == 2  # the model file as the output folder
    capsys.readouterr()
    assert hashlib.sha256(case["path"].read_bytes()).hexdigest() == before
