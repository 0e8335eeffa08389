"""The learned similarity: its pose gradient through the DRR Jacobian, training, the measure, LM, model files.

Independent truths: autograd through the renderer and central finite
differences for d s / d xi; the untrained network's cosine on the same
held-out pairs for "training helps"; the residual recomputed at the final
pose for Levenberg-Marquardt; fingerprints of other CTs and detectors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from DiffRegLogic.drr.rendering import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.detector import Detector
from DiffRegLogic.geometry.motions import perturb_pose, pose_from_se3_about
from DiffRegLogic.learning import so4
from DiffRegLogic.learning.augment import NO_AUGMENTATION
from DiffRegLogic.learning.data import network_input
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.similarity_data import PairSource, geodesic_distance, validation_pairs
from DiffRegLogic.learning.similarity_inference import LearnedSimilarity, load_similarity, register_learned
from DiffRegLogic.learning.similarity_net import SimilarityNet, SimilarityNetConfig
from DiffRegLogic.learning.similarity_trainer import (SimilarityTrainConfig, similarity_gradients, train_similarity,
                                                      validate_similarity)
from DiffRegLogic.registration import register
from DiffRegLogic.registration.options import make_options
from DiffRegLogic.similarity.measure import Measure
from DiffRegLogic.volume.phantoms import chest_phantom, gaussian_smooth

DETECTOR = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))
TINY_NET = SimilarityNetConfig(image_size=32, groups=4, channels=(8, 16), dim=32, depth=1)
TINY = dict(network=TINY_NET, batch_size=8, pool_pairs=64, stages=1, validation_pairs=24, validate_every=0,
            checkpoint_every=0, log_every=5, target_range=PoseRange(10.0, 15.0), offset_range=PoseRange(20.0, 30.0))


@pytest.fixture(scope="module")
def volume():
    return chest_phantom()


@pytest.fixture(scope="module")
def reference(volume):
    return reference_view(volume, DETECTOR, 600.0)


@pytest.fixture(scope="module")
def trained(volume, reference, tmp_path_factory):
    """A tiny similarity trained for 40 steps on clean pairs (and its file), with the untrained network of its seed."""
    path = tmp_path_factory.mktemp("similarity") / "sim.pt"
    config = SimilarityTrainConfig(steps=40, lr=3e-3, augmentation=NO_AUGMENTATION, **TINY)
    torch.manual_seed(config.seed)
    untrained = SimilarityNet(TINY_NET)  # the trainer seeds its initialisation with config.seed too
    result = train_similarity(volume, DETECTOR, config, reference_pose=reference, checkpoint_path=path, bar=False)
    return {"result": result, "path": path, "untrained": untrained, "config": config}


def test_the_pose_gradient_through_the_drr_jacobian_equals_autograd_and_finite_differences():
    # a coarse, smoothed phantom: its line integrals are smooth enough in the pose for central differences
    volume = chest_phantom(shape_ijk=(64, 56, 48), spacing=(5.2, 5.2, 6.0))
    volume = dataclasses.replace(volume, mu=gaussian_smooth(volume.mu, 1.5))
    reference = reference_view(volume, DETECTOR, 600.0)
    torch.manual_seed(0)
    net = SimilarityNet(SimilarityNetConfig(image_size=16, groups=2, channels=(8,), dim=16, depth=1)).eval()
    detector = Detector(rows=16, cols=16, sdd=1020.0, pixel_spacing=(37.5, 37.5))
    center = volume.center.to(torch.float64)
    target_pose = perturb_pose(reference, torch.tensor([[0.05, -0.04, 0.03, 4.0, -6.0, 3.0]], dtype=torch.float64),
                               center)
    start = perturb_pose(target_pose[0], torch.tensor([[0.1, 0.08, -0.06, 12.0, 9.0, -7.0]], dtype=torch.float64),
                         center)
    source = PairSource(volume, detector, reference, target_range=PoseRange(0.0, 0.0),
                        offset_range=PoseRange(1.0, 1.0), image_size=16)
    from DiffRegLogic.drr.jacobian import render_with_jacobian

    def pose_of(xi):
        return pose_from_se3_about(start.to(xi), xi, center.to(xi))

    target_image = render(volume, source.render_detector, target_pose)
    drr, jac = render_with_jacobian(volume, source.render_detector, pose_of, torch.zeros(1, 6, dtype=torch.float64))
    targets = network_input(target_image, 16)
    _, via_jacobian = similarity_gradients(net, "so4", 2, targets, drr.float(), jac.float(), create_graph=False)

    def distance(xi):
        image = render(volume, source.render_detector, pose_of(xi))
        e = so4.embedding(net(torch.cat([targets, network_input(image, 16, differentiable=True)])), "so4")
        return so4.distance_sq(e[1:], e[:1], "so4") / 2

    xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    (autograd,) = torch.autograd.grad(distance(xi).sum(), xi)
    torch.testing.assert_close(via_jacobian.double(), autograd, rtol=2e-3, atol=1e-7)
    steps = torch.tensor([1e-3] * 3 + [0.05] * 3, dtype=torch.float64)
    fd = torch.stack([(distance(torch.eye(6, dtype=torch.float64)[k:k + 1] * steps[k])
                       - distance(-torch.eye(6, dtype=torch.float64)[k:k + 1] * steps[k])) / (2 * steps[k])
                      for k in range(6)], -1).reshape(1, 6).detach().double()
    # Siddon's line integrals have kinks where rays cross voxel faces: rotations (a lever of ~150 mm) feel them
    rotation_cos = torch.nn.functional.cosine_similarity(via_jacobian.double()[:, :3], fd[:, :3])
    assert float(rotation_cos) > 0.98, (via_jacobian, fd)
    torch.testing.assert_close(via_jacobian.double()[:, 3:], fd[:, 3:], rtol=0.05, atol=0.05 * float(fd[:, 3:].abs().max()))


def test_the_geodesic_distance_is_one_at_the_offset_box_edge_and_zero_at_the_truth(volume, reference):
    center = volume.center.to(torch.float64)
    rho_rad, rho_mm = torch.pi / 4, 60.0
    one_axis = perturb_pose(reference, torch.tensor([[torch.pi / 4, 0, 0, 0, 0, 0.0], [0, 0, 0, 0, 60.0, 0]],
                                                    dtype=torch.float64), center)
    d = geodesic_distance(one_axis, reference.expand(2, 4, 4), center, rho_rad, rho_mm)
    torch.testing.assert_close(d, torch.ones(2, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    both = perturb_pose(reference, torch.tensor([[0, 0, torch.pi / 8, 30.0, 0, 0]], dtype=torch.float64), center)
    d = geodesic_distance(both, reference[None], center, rho_rad, rho_mm)
    torch.testing.assert_close(d, torch.tensor([0.5 ** 0.5 * 1.0], dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert float(geodesic_distance(reference[None], reference[None], center, rho_rad, rho_mm)) < 1e-9


def test_training_raises_the_cosine_with_the_geodesic_gradient_on_held_out_pairs(trained, volume, reference):
    result, config = trained["result"], trained["config"]
    source = PairSource(volume, DETECTOR, reference, target_range=config.target_range,
                        offset_range=config.offset_range, image_size=32)
    pairs = validation_pairs(source, config.validation_pairs, config.seed)  # the trainer's held-out pairs
    before = validate_similarity(trained["untrained"], pairs)
    after = validate_similarity(result.model, pairs)
    assert after["cosine"] == pytest.approx(result.validation["cosine"], abs=1e-5)  # the same pairs
    assert after["cosine"] > before["cosine"] + 0.05, (before, after)  # measured: 0.237 -> 0.353 at 60 steps


def test_the_measure_is_one_minus_the_residual_norm_and_ignores_masked_pixels(trained, volume, reference):
    similarity = load_similarity(trained["path"], volume, DETECTOR)
    center = volume.center.to(torch.float64)
    poses = perturb_pose(reference, torch.tensor([[0.0] * 6, [0.1, 0, 0, 10.0, 0, 0]], dtype=torch.float64), center)
    drrs = render(volume, DETECTOR, poses)
    xray = drrs[0]
    value = similarity(drrs, xray)
    residual = similarity.residual(drrs, xray)
    torch.testing.assert_close(value, 1 - residual.square().sum(-1), rtol=0, atol=1e-5)
    assert float(value[0]) == pytest.approx(1.0, abs=1e-5)  # identical images: distance 0
    assert float(value[1]) < float(value[0])
    mask = torch.ones(64, 64)
    mask[:, :16] = 0
    changed = xray.clone()
    changed[:, :16] = 1e3  # only pixels the mask removes
    torch.testing.assert_close(similarity(drrs, changed, mask), similarity(drrs, xray, mask), rtol=0, atol=1e-6)
    assert not torch.allclose(similarity(drrs, changed), similarity(drrs, xray), atol=1e-4)  # the cache follows the X-ray
    per_row = mask.expand(2, 64, 64).clone()  # robust weights / footprints: one mask per DRR, the X-ray under each
    torch.testing.assert_close(similarity(drrs, xray, per_row), similarity(drrs, xray, mask), rtol=0, atol=1e-6)
    torch.testing.assert_close(similarity(drrs, xray, mask[None]), similarity(drrs, xray, mask), rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="mask"):
        similarity(drrs, xray, torch.ones(3, 64, 64))
    before = similarity(drrs, xray).clone()
    xray.mul_(0.5).add_(torch.linspace(0, 1, 64))  # changed in place: the cached embedding must not be reused
    assert not torch.allclose(similarity(drrs, xray), before, atol=1e-4)


def test_levenberg_marquardt_on_the_learned_residual_never_accepts_a_worse_step(trained, volume, reference):
    similarity = load_similarity(trained["path"], volume, DETECTOR)
    center = volume.center.to(torch.float64)
    truth = perturb_pose(reference, torch.tensor([[0.03, -0.02, 0.04, 4.0, -3.0, 2.0]], dtype=torch.float64),
                         center)[0]
    start = perturb_pose(truth, torch.tensor([[0.08, 0.06, -0.05, 8.0, 6.0, -6.0]], dtype=torch.float64), center)[0]
    xray = render(volume, DETECTOR, truth)[0]
    result = register(volume, xray, DETECTOR, start, make_options(optimizer="lm", similarity=similarity,
                                                                   levels=(4.0,), max_iterations=5))
    best = [float(torch.as_tensor(entry["best_similarity"]).reshape(-1)[0]) for entry in result.trace]
    assert all(b >= a - 1e-12 for a, b in zip(best, best[1:]))
    assert best[-1] > result.initial_similarity  # at least one accepted step
    from DiffRegLogic.registration.pyramid import resize_image

    coarse = DETECTOR.downsample(4.0)
    small = resize_image(xray, coarse.shape)

    def cost(pose):  # ||r||^2 recomputed here, from a render of the pose
        return float(similarity.residual(render(volume, coarse, pose[None]), small).square().sum())

    assert cost(result.pose) < cost(start)


def test_learned_then_polish_reports_both_stages(trained, volume, reference):
    similarity = load_similarity(trained["path"], volume, DETECTOR)
    center = volume.center.to(torch.float64)
    truth = perturb_pose(reference, torch.tensor([[0.02, 0.0, 0.0, 3.0, 0.0, 0.0]], dtype=torch.float64), center)[0]
    xray = render(volume, DETECTOR, truth)[0]
    result = register_learned(volume, xray, DETECTOR, reference, make_options(levels=(2.0,), max_iterations=5),
                              similarity, polish="zncc")
    assert [s["similarity"] for s in result.stages] == ["learned", "zncc"]
    torch.testing.assert_close(torch.tensor(result.stages[1]["camera_from_world"], dtype=torch.float64), result.pose)
    polish = result.options["polish"]
    assert result.options["similarity"] == "learned" and list(result.options["levels"]) == [2.0]
    assert polish["similarity"] == "zncc" and list(polish["levels"]) == [1.0]  # the polish ran at full size
    assert result.similarity == result.stages[1]["similarity_value"]
    from DiffRegLogic.similarity.ncc import zncc

    at_start = float(zncc(render(volume, DETECTOR, reference[None]).double(), xray.double()))
    assert result.initial_similarity == pytest.approx(at_start, abs=1e-9)  # one measure from start to end
    assert {e["stage"] for e in result.trace} == {"learned", "zncc"}
    assert len(result.iterations_per_level) == 2
    assert result.iterations == sum(s["iterations"] for s in result.stages)
    alone = register_learned(volume, xray, DETECTOR, reference, make_options(levels=(2.0,), max_iterations=5),
                             similarity, polish="none")
    assert len(alone.stages) == 1
    with pytest.raises(InputError, match="unknown polish"):
        register_learned(volume, xray, DETECTOR, reference, None, similarity, polish="nonsense")


def test_levenberg_marquardt_refuses_a_learned_measure_without_its_residual(trained, volume, reference):
    similarity = load_similarity(trained["path"], volume, DETECTOR)
    bare = Measure(similarity.__call__, None, None, "learned-without-residual")
    xray = render(volume, DETECTOR, reference[None])[0]
    with pytest.raises(InputError, match="no residual"):
        register(volume, xray, DETECTOR, reference, make_options(optimizer="lm", similarity=bare, levels=(2.0,)))


def test_model_files_are_refused_for_another_ct_or_detector_and_name_the_kind(trained, volume, tmp_path):
    path = trained["path"]
    other_ct = dataclasses.replace(volume, mu=volume.mu * 1.1)
    with pytest.raises(InputError, match="another CT"):
        load_similarity(path, other_ct, DETECTOR)
    with pytest.raises(InputError, match="another detector"):
        load_similarity(path, volume, Detector(rows=64, cols=64, sdd=1000.0, pixel_spacing=(9.375, 9.375)))
    with pytest.raises(InputError, match="does not exist"):
        load_similarity(tmp_path / "missing.pt")
    from DiffRegLogic.learning.checkpoint import load_pose_network

    with pytest.raises(InputError, match="learned similarity, not a pose network"):
        load_pose_network(path)
    assert isinstance(load_similarity(path, volume, DETECTOR), LearnedSimilarity)


def test_a_patient_agnostic_model_trains_on_phantoms_and_is_accepted_for_any_ct(volume, tmp_path):
    config = SimilarityTrainConfig(steps=1, phantoms=2, **{**TINY, "pool_pairs": 8, "validation_pairs": 4})
    path = tmp_path / "agnostic.pt"
    result = train_similarity(None, DETECTOR, config, checkpoint_path=path, bar=False)
    assert result.step == 1
    similarity = load_similarity(path, chest_phantom(spacing=(2.7, 2.6, 3.0)), DETECTOR)  # a CT it never saw
    assert similarity.info["agnostic"] and similarity.info["phantoms"] == 2
    with pytest.raises(InputError, match="patient's CT"):
        train_similarity(None, DETECTOR, dataclasses.replace(config, phantoms=0), bar=False)


def test_an_interrupted_similarity_run_resumes_to_the_same_weights(volume, reference, tmp_path):
    config = SimilarityTrainConfig(steps=3, **{**TINY, "pool_pairs": 16, "validation_pairs": 4})
    straight = train_similarity(volume, DETECTOR, config, reference_pose=reference, bar=False)
    path = tmp_path / "resume.pt"

    def stop_after_one(record):
        if record.get("event") == "progress" and record["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_similarity(volume, DETECTOR, dataclasses.replace(config, log_every=1), reference_pose=reference,
                         checkpoint_path=path, progress=stop_after_one, bar=False)
    resumed = train_similarity(volume, DETECTOR, dataclasses.replace(config, log_every=1), reference_pose=reference,
                               checkpoint_path=path, resume=True, bar=False)
    assert resumed.step == 3
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="embedding"):
        SimilarityNetConfig(embedding="hyperbolic")
    with pytest.raises(InputError, match="multiple of 8"):
        SimilarityNetConfig(image_size=36)
    with pytest.raises(InputError, match="exactly one training budget"):
        SimilarityTrainConfig()
    with pytest.raises(InputError, match="at least one of"):
        SimilarityTrainConfig(steps=1, direction_weight=0, distance_weight=0)
    with pytest.raises(InputError, match=r"\(n, 1, 32, 32\)"):
        SimilarityNet(TINY_NET)(torch.zeros(1, 1, 16, 16))
