"""The realism experiment end to end on a tiny case (phantom, 48 px, 2 starts), and its image conversion.

Truth: the start errors follow from the sampled motions (mTRE by hand with
scipy's rotation); the summaries and the Markdown are recomputed from the
CSV; the clean and inverted presets reproduce the model's DRR at the truth
exactly (NCC 1); the conversions of raw and inverted images are numpy
formulas; an interrupt keeps the finished rows.
"""

from __future__ import annotations

import csv
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from DiffRegLogic import evaluation, experiments
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.common import ExperimentInterrupted
from DiffRegLogic.experiments.demo import DEMO_DETECTOR, demo_poses
from DiffRegLogic.experiments.realism_study import REALISM_COLUMNS, as_line_integral
from DiffRegLogic.geometry import Detector
from DiffRegLogic.registration import random_motions
from DiffRegLogic.volume.phantoms import chest_phantom

OPTIONS = dict(levels=(2.0,), max_iterations=30)


@pytest.fixture(scope="module")
def case():
    volume = chest_phantom((32, 28, 24), (10.4, 10.4, 12.0))  # the default extent on a coarse grid
    detector = Detector(**DEMO_DETECTOR).downsample(200 / 48)
    target, _ = demo_poses(volume.center.to(torch.float64))
    return dict(volume=volume, detector=detector, target=target)


@pytest.fixture(scope="module")
def run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("realism") / "new"
    return experiments.realism(case["volume"], case["detector"], case["target"], out, presets=("clean", "inverted"),
                               variants=("zncc",), n=2, seed=3, options=OPTIONS, log=None)


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_starts_and_summary_match_the_csv(case, run):
    rows = _read(run["csv"])
    assert list(rows[0]) == list(REALISM_COLUMNS)
    assert [(r["preset"], r["variant"], r["start"]) for r in rows] == [
        ("clean", "zncc", "0"), ("clean", "zncc", "1"), ("inverted", "zncc", "0"), ("inverted", "zncc", "1")]
    # start mTRE by hand: the CT rotated about its centre c and shifted, p -> R (p - c) + c + t
    motions = random_motions(2, 10.0, 20.0, 3).numpy()
    points = evaluation.target_points(case["volume"], 1000).numpy()
    c = case["volume"].center.numpy()
    for i, m in enumerate(motions):
        moved = Rotation.from_rotvec(m[:3]).apply(points - c) + c + m[3:]
        by_hand = np.linalg.norm(moved - points, axis=1).mean()
        for r in rows:
            if int(r["start"]) == i:
                assert float(r["start_mtre_mm"]) == pytest.approx(by_hand, abs=1e-3)
    for preset in ("clean", "inverted"):
        mine = [r for r in rows if r["preset"] == preset]
        final = np.array([float(r["final_mtre_mm"]) for r in mine])
        s = run["summary"][preset]["zncc"]
        assert s["n"] == 2 and s["success_rate"] == pytest.approx(np.mean(final < 2.0))
        assert s["median_final_mtre_mm"] == pytest.approx(np.median(final), abs=1e-4)
        assert s["median_ncc"] == pytest.approx(np.median([float(r["ncc"]) for r in mine]), abs=1e-6)
        assert s["median_final_mtre_mm"] < float(np.median([float(r["start_mtre_mm"]) for r in mine]))
    markdown = run["markdown"].read_text()
    s = run["summary"]["clean"]["zncc"]
    assert f"| clean | zncc | 2 | {100 * s['success_rate']:.0f}% | {s['median_final_mtre_mm']:.2f} |" in markdown
    assert "| inverted | inverted | inverted | 0.0% |" in markdown


def test_known_conventions_reproduce_the_model_at_the_truth(run):
    for preset, convention in (("clean", "line_integral"), ("inverted", "inverted")):
        facts = run["presets"][preset]
        assert facts["convention"] == convention
        assert facts["ncc_at_truth"] == pytest.approx(1.0, abs=1e-5)
        assert facts["instrument_coverage"] == 0.0


def test_the_png_has_one_row_of_three_panels_per_preset(run):
    with Image.open(run["png"]) as image:
        width, height = image.size
    assert height == 2 * 48 and width >= 3 * 48


def test_as_line_integral_inverts_each_known_convention():
    gen = torch.Generator().manual_seed(0)
    li = torch.rand(30, 40, generator=gen, dtype=torch.float64) * 4
    raw = torch.exp(-li)
    assert torch.equal(as_line_integral(li, "line_integral"), li)
    i0 = np.percentile(raw.numpy(), 99.9)
    np.testing.assert_allclose(as_line_integral(raw, "intensity").numpy(), li.numpy() + np.log(i0), atol=1e-9)
    inverted = li.max() + li.min() - li
    ref = np.percentile(inverted.numpy(), 99.9)
    np.testing.assert_allclose(as_line_integral(inverted, "inverted").numpy(), ref - inverted.numpy(), atol=1e-12)
    raw_inverted = 1.0 - raw  # bone bright raw image
    reflected = raw_inverted.numpy().max() - raw_inverted.numpy()
    reflected = np.maximum(reflected, 1e-6 * reflected.max())
    expected = -np.log(reflected / np.percentile(reflected, 99.9))
    np.testing.assert_allclose(as_line_integral(raw_inverted, "inverted_intensity").numpy(), expected, atol=1e-9)
    with pytest.raises(InputError):
        as_line_integral(li, "log")
    with pytest.raises(InputError):
        as_line_integral(-raw, "intensity")


def test_detect_mode_delegates_to_the_convention_module(monkeypatch):
    from DiffRegLogic.xray import convention as detection

    calls = []
    monkeypatch.setattr(detection, "detect_convention",
                        lambda image, drr=None, mask=None: calls.append(drr) or detection.Detection("inverted", {}, ""))
    image = torch.rand(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    drr = torch.ones(4, 5)
    out = as_line_integral(image, "intensity", "detect", drr)
    assert torch.allclose(out, detection.apply_convention(image, "inverted")) and len(calls) == 1
    assert torch.equal(calls[0], drr)


def test_detect_mode_finds_the_stored_conventions(case, tmp_path):
    run = experiments.realism(case["volume"], case["detector"], case["target"], tmp_path / "out",
                              presets=("raw", "inverted"), n=1, options=OPTIONS, convention="detect", log=None)
    for preset, convention in (("raw", "intensity"), ("inverted", "inverted")):
        assert run["presets"][preset]["converted_as"] == convention
        assert run["presets"][preset]["ncc_at_truth"] > 0.99


def test_an_interrupt_keeps_the_finished_rows(case, tmp_path):
    def stop(_line):
        raise KeyboardInterrupt

    with pytest.raises(ExperimentInterrupted) as caught:
        experiments.realism(case["volume"], case["detector"], case["target"], tmp_path / "out",
                            presets=("clean", "noise"), n=1, options=OPTIONS, log=stop)
    rows = _read(caught.value.kept)
    assert caught.value.kept.name == "realism.partial.csv" and [r["preset"] for r in rows] == ["clean"]
    assert not (tmp_path / "out" / "realism.csv").exists()


@pytest.mark.parametrize("change", [dict(presets=("fog",)), dict(variants=("best",)), dict(variants={}),
                                    dict(n=0), dict(convention="guess"), dict(presets=("clean", "clean")),
                                    dict(options={"levels": "coarse"})])
def test_bad_arguments_are_input_errors_before_any_work(case, tmp_path, change):
    kwargs = dict(presets=("clean",), n=1, options=OPTIONS, log=None) | change
    with pytest.raises(InputError):
        experiments.realism(case["volume"], case["detector"], case["target"], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_matched_model_is_polychromatic_at_the_xray_beam_only_when_the_xray_is():
    """The "matched" variant's model: the X-ray's own tube (kVp, filtration) for a polychromatic X-ray, else the CT."""
    from DiffRegLogic.experiments.realism_study import matched_model
    from DiffRegLogic.physics.materials import MaterialVolume
    from DiffRegLogic.physics.spectra import tube_spectrum
    from DiffRegLogic.physics.xray_simulation import preset
    from DiffRegLogic.volume.phantoms import chest_phantom

    volume = chest_phantom(shape_ijk=(24, 22, 20), spacing=(14.0, 13.5, 14.5))
    assert matched_model(volume, preset("clean")) is volume
    model = matched_model(volume, preset("polychromatic"))
    assert isinstance(model, MaterialVolume)
    expected = tube_spectrum(preset("polychromatic").kvp, preset("polychromatic").filtration_mm_al)
    assert model.beam.spectrum.energies_kev == expected.energies_kev
    assert model.beam.spectrum.fluence == expected.fluence
