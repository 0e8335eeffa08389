"""Model files (`DiffRegLogic.learning.checkpoint`): contents, round trip, fingerprints, refusals.

Truth: the loaded network's predictions are compared with the in-memory
model's on the same inputs (bit for bit); fingerprints are compared between
copies of one CT that differ only in dtype or device (equal) and CTs that
differ by a 5 mm shift or a 1 % rescale of mu (different); bad files are
made by hand (text, a truncated copy, a torch file of other things, a newer
format, missing weights) and each must be refused with a message naming
the problem.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from DiffRegLogic import __version__
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import demo_detector
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.files import detector_to_dict
from DiffRegLogic.learning.augment import NO_AUGMENTATION
from DiffRegLogic.learning.checkpoint import (FORMAT, FORMAT_VERSION, fingerprint_detector, fingerprint_volume,
                                              load_pose_network, save_checkpoint)
from DiffRegLogic.learning.networks import PoseNet, PoseNetConfig
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.trainer import TrainConfig, train
from DiffRegLogic.volume.ct import Volume
from DiffRegLogic.volume.phantoms import chest_phantom


def _phantom() -> Volume:
    return chest_phantom(shape_ijk=(32, 28, 24), spacing=(10.4, 10.4, 12.0))


def _shifted(volume: Volume, mm: float = 5.0) -> Volume:
    affine = volume.affine.clone()
    affine[0, 3] += mm
    return Volume(volume.mu, affine)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step model on the small phantom, written to a model file."""
    volume = _phantom()
    detector = demo_detector().downsample(4)
    reference = reference_view(volume, detector)
    config = TrainConfig(network=PoseNetConfig(image_size=32, backbone="small", dropout=0.0),
                         pose_range=PoseRange((10.0,) * 3, (10.0,) * 3), steps=3, batch_size=2, pool_images=4,
                         stages=2, validation_images=4, target_points=50, augmentation=NO_AUGMENTATION)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    result = train(volume, detector, reference, config, checkpoint_path=path, bar=False)
    return dict(volume=volume, detector=detector, reference=reference, config=config, path=path, result=result)


# ---------------------------------------------------------------------- fingerprints


def test_volume_fingerprint_ignores_dtype_and_tiny_affine_noise_but_not_another_ct():
    volume = _phantom()
    fp = fingerprint_volume(volume)
    assert len(fp) == 64 and int(fp, 16) >= 0  # sha256 hex
    assert fingerprint_volume(volume.to(dtype=torch.float64)) == fp
    noisy = volume.affine.clone()
    noisy[:3, 3] += 1e-5
    assert fingerprint_volume(Volume(volume.mu, noisy)) == fp
    assert fingerprint_volume(_shifted(volume)) != fp
    assert fingerprint_volume(Volume(volume.mu * 1.01, volume.affine)) != fp
    assert fingerprint_volume(chest_phantom(shape_ijk=(32, 28, 25), spacing=(10.4, 10.4, 12.0))) != fp


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU leg, run on a lent machine)")
def test_volume_fingerprint_is_the_same_on_cuda():
    volume = _phantom()
    assert fingerprint_volume(volume.to("cuda")) == fingerprint_volume(volume)


def test_detector_fingerprint():
    detector = demo_detector()
    fp = fingerprint_detector(detector)
    assert fingerprint_detector(detector_to_dict(detector)) == fp
    assert fingerprint_detector(dataclasses.replace(detector, sdd=float(detector.sdd) + 1e-9)) == fp
    assert fingerprint_detector(dataclasses.replace(detector, sdd=float(detector.sdd) + 1.0)) != fp
    assert fingerprint_detector(dataclasses.replace(detector, principal_point=(10.0, 20.0))) != fp


# ---------------------------------------------------------------------- round trip


def test_file_loads_with_weights_only_and_holds_the_documented_keys(trained):
    data = torch.load(trained["path"], weights_only=True)
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert data["diffreg_version"] == __version__
    assert data["config"] == trained["config"].to_dict()
    assert data["volume_fingerprint"] == fingerprint_volume(trained["volume"])
    assert data["detector"] == detector_to_dict(trained["detector"])
    assert data["step"] == 3 and data["complete"] and data["world_size"] == 1
    assert data["validation"] == trained["result"].validation
    torch.testing.assert_close(data["reference_pose"], trained["reference"], rtol=0, atol=0)
    torch.testing.assert_close(data["center"], trained["volume"].center.double(), rtol=0, atol=0)
    assert {"optimizer", "history", "generator_states", "rng_state", "elapsed_s"} <= set(data)
    assert not [p for p in trained["path"].parent.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_gives_identical_predictions(trained):
    model, info = load_pose_network(trained["path"], trained["volume"], trained["detector"])
    assert not model.training
    assert info.config == trained["config"] and info.image_size == 32 and info.detector_shape == (50, 50)
    assert info.pose_range == trained["config"].pose_range and info.version == __version__
    assert info.validation == trained["result"].validation and info.step == 3 and info.complete
    assert info.fingerprints == {"volume": fingerprint_volume(trained["volume"]),
                                 "detector": fingerprint_detector(trained["detector"])}
    torch.testing.assert_close(info.center, trained["volume"].center.double(), rtol=0, atol=0)
    images = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    original = trained["result"].model.eval()
    with torch.no_grad():
        a, b = original(images), model(images)
    for field in ("rotation", "translation_mm", "reconstruction"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    # the loaded weights are the trained ones, not a fresh initialisation
    torch.manual_seed(0)
    with torch.no_grad():
        fresh = PoseNet(trained["config"].network).eval()(images)
    assert not torch.equal(fresh.translation_mm, b.translation_mm)


# ---------------------------------------------------------------------- refusals


def test_another_ct_is_refused(trained):
    for other in (_shifted(trained["volume"]), Volume(trained["volume"].mu * 1.05, trained["volume"].affine)):
        with pytest.raises(InputError, match="trained on another CT .*diffreg train"):
            load_pose_network(trained["path"], volume=other)


def test_another_detector_is_refused_naming_the_field(trained):
    other = dataclasses.replace(trained["detector"], sdd=float(trained["detector"].sdd) + 50.0)
    with pytest.raises(InputError, match="another detector: source_to_detector_mm 1020.0 \\(model\\) vs 1070.0"):
        load_pose_network(trained["path"], detector=other)
    smaller = Detector(rows=40, cols=50, sdd=trained["detector"].sdd, pixel_spacing=(12.0, 12.0))
    with pytest.raises(InputError, match="rows 50 \\(model\\) vs 40"):
        load_pose_network(trained["path"], detector=smaller)


def test_bad_files_are_refused(trained, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_pose_network(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="not a file"):
        load_pose_network(tmp_path)
    text = tmp_path / "text.pt"
    text.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.pt"
    raw = trained["path"].read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    for path in (text, truncated):
        with pytest.raises(InputError, match="not a readable DiffReg pose network"):
            load_pose_network(path)
    other = tmp_path / "other.pt"
    for obj in ({"weights": torch.zeros(3)}, [torch.zeros(2)], torch.zeros(4)):
        torch.save(obj, other)
        with pytest.raises(InputError, match="not a DiffReg pose network"):
            load_pose_network(other)

    data = torch.load(trained["path"], weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**data, "format_version": FORMAT_VERSION + 1}, newer)
    with pytest.raises(InputError, match="newer .*update DiffReg"):
        load_pose_network(newer)
    broken = tmp_path / "broken.pt"
    weights = dict(data["weights"])
    weights.pop(next(iter(weights)))
    torch.save({**data, "weights": weights}, broken)
    with pytest.raises(InputError, match="weights do not fit"):
        load_pose_network(broken)
    torch.save({**data, "config": {**data["config"], "unknown_key": 1}}, broken)
    with pytest.raises(InputError, match="unknown_key"):
        load_pose_network(broken)


def test_save_is_atomic_and_replaces_the_old_file(trained, tmp_path):
    path = tmp_path / "sub" / "m.pt"
    model = PoseNet(trained["config"].network)
    common = dict(config=trained["config"], reference_pose=trained["reference"], center=trained["volume"].center,
                  volume=trained["volume"], detector=trained["detector"])
    save_checkpoint(path, weights=model.state_dict(), step=1, **common)
    save_checkpoint(path, weights=model.state_dict(), step=2, **common)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]
    assert torch.load(path, weights_only=True)["step"] == 2
