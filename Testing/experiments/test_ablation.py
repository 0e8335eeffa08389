"""`experiments.ablation`: the tables agree with their cases, the per-axis errors with an independent formula."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.experiments import ablation
from DiffRegLogic.experiments.ablation_study import AXES, case_errors
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.motions import perturb_pose
from DiffRegLogic.learning.networks import PoseNetConfig
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.trainer import TrainConfig
from DiffRegLogic.volume.phantoms import chest_phantom

DETECTOR = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))


def test_case_errors_are_the_motion_from_the_truth_to_the_estimate():
    volume = chest_phantom()
    center = volume.center.to(torch.float64)
    truth = reference_view(volume, DETECTOR, 600.0)
    motion = torch.tensor([[0.0, 0.0, math.radians(4.0), 3.0, -4.0, 12.0]], dtype=torch.float64)
    estimate = perturb_pose(truth, motion, center)[0]  # the CT turned 4 deg about z and shifted (3, -4, 12) mm
    points = evaluation.target_points(volume, 500)
    errors = case_errors(estimate, truth, points, DETECTOR, center)
    expected = [0.0, 0.0, 4.0, 3.0, 4.0, 12.0]
    assert [errors[a] for a in AXES] == pytest.approx(expected, abs=1e-9)
    assert errors["mtre_mm"] == pytest.approx(float(evaluation.mtre(estimate, truth, points)), rel=1e-12)


def test_ablation_tables_summarise_their_cases(tmp_path):
    volume = chest_phantom()
    reference = reference_view(volume, DETECTOR, 600.0)
    config = TrainConfig(network=PoseNetConfig(image_size=32, backbone="small", max_translation_mm=(5.0,) * 3),
                         pose_range=PoseRange((5.0,) * 3, (5.0,) * 3), steps=3, batch_size=4, pool_images=8,
                         validation_images=4, target_points=100, seed=0)
    report = ablation(volume, DETECTOR, reference, tmp_path, config, rows=("A", "[A+B+C]*", "[A+B+C]*+D"), n=2,
                      refine_options={"levels": (2.0, 1.0), "max_iterations": 40}, log=None)
    cases = list(csv.DictReader((tmp_path / "ablation_cases.csv").open()))
    summary = {r["row"]: r for r in csv.DictReader((tmp_path / "ablation.csv").open())}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.csv", "ablation.md", "ablation.png",
                                                          "ablation_cases.csv"]
    for row, threshold in (("A", 10.0), ("[A+B+C]*", 10.0), ("[A+B+C]*+D", 2.0)):
        mtre = [float(c["mtre_mm"]) for c in cases if c["row"] == row]
        assert len(mtre) == 2
        assert float(summary[row]["mtre_mm_mean"]) == pytest.approx(statistics.fmean(mtre), rel=1e-9)
        assert float(summary[row]["success_rate"]) == pytest.approx(sum(m < threshold for m in mtre) / 2)
        assert float(summary[row]["success_threshold_mm"]) == threshold
    network = [float(c["mtre_mm"]) for c in cases if c["row"] == "[A+B+C]*"]
    refined = [float(c["mtre_mm"]) for c in cases if c["row"] == "[A+B+C]*+D"]
    assert all(r < 2.0 for r in refined) and all(r < n for r, n in zip(refined, network))  # +5 deg / 5 mm: refined
    assert report["rows"][0]["train_steps"] == 3
    with pytest.raises(Exception, match="unknown ablation row"):
        ablation(volume, DETECTOR, reference, tmp_path, config, rows=("Z",), n=1, log=None)
